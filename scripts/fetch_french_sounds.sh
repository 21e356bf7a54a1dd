#!/usr/bin/env bash
# Fetch the Asterisk core sounds in Canadian French (June Wallack, CC-BY-SA-3.0)
# from Debian and unpack them without installing anything:
#   DEST/fr/<name>.wav       8 kHz mono 16-bit WAV, upstream relative names
#   DEST/doc/                upstream transcript (core-sounds-fr.txt.gz) and copyright
# Usage: scripts/fetch_french_sounds.sh [DEST]   (default: data/sounds)
set -euo pipefail

DEST="${1:-data/sounds}"
PKGS=(asterisk-core-sounds-fr-wav asterisk-core-sounds-fr)   # the second one holds the transcript

fail() { echo "fetch_french_sounds: FAILED: $1" >&2; echo "fetch_french_sounds: fix: $2" >&2; exit 1; }

if [ -f "$DEST/fr/vm-intro.wav" ] && [ -f "$DEST/doc/core-sounds-fr.txt.gz" ]; then
  echo "fetch_french_sounds: already present in $DEST/fr, nothing to do"
  exit 0
fi

command -v apt-get >/dev/null && command -v dpkg >/dev/null \
  || fail "apt-get/dpkg not found" "run this on a Debian/Ubuntu machine"
mkdir -p "$DEST" || fail "cannot create $DEST" "check permissions on $(dirname "$DEST")"
# Work inside DEST so the final move is an atomic rename; cleaned up on any exit.
TMP="$(mktemp -d "$DEST/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "fetch_french_sounds: downloading ${PKGS[*]}"
if ! (cd "$TMP" && apt-get download "${PKGS[@]}" >/dev/null 2>&1); then
  echo "fetch_french_sounds: download failed, running apt-get update and retrying"
  apt-get update >/dev/null 2>&1 || fail "apt-get update" "run it as root (or with sudo) and check network/apt sources"
  (cd "$TMP" && apt-get download "${PKGS[@]}") \
    || fail "apt-get download ${PKGS[*]}" "check that 'main' is in your apt sources and that 'apt-cache policy ${PKGS[0]}' shows a candidate"
fi

echo "fetch_french_sounds: extracting"
for deb in "$TMP"/*.deb; do
  dpkg -x "$deb" "$TMP/root" || fail "dpkg -x $(basename "$deb")" "delete $DEST/.fetch.* and rerun; the .deb may be corrupt"
done
SRC="$TMP/root/usr/share/asterisk/sounds/fr_CA_f_June"
[ -f "$SRC/vm-intro.wav" ] || fail "no WAV files found in $SRC" "the package layout changed; look at 'dpkg -c' of ${PKGS[0]}"

echo "fetch_french_sounds: installing into $DEST/fr and $DEST/doc"
rm -rf "$DEST/fr" "$DEST/doc"
mkdir -p "$TMP/doc"
cp "$TMP/root/usr/share/doc/asterisk-core-sounds-fr/core-sounds-fr.txt.gz" \
   "$TMP/root/usr/share/doc/asterisk-core-sounds-fr/copyright" "$TMP/doc/"
mv "$TMP/doc" "$DEST/doc"
mv "$SRC" "$DEST/fr"
echo "fetch_french_sounds: done, $(find "$DEST/fr" -name '*.wav' | wc -l) WAV files in $DEST/fr"
