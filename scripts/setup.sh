#!/usr/bin/env bash
# One-time (idempotent) set-up: system packages, virtual environment, Python packages, models.
# Usage: scripts/setup.sh [--whisper-model NAME] [--piper-voice NAME]   (extra args go to `ivr models provision`)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nERREUR / ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# --- system packages -----------------------------------------------------------------------------
# pico: the French voice; espeak-ng + mbrola fr1 and fr4: two more French voices that play callers in tests;
# fr2 and fr6: callers the tests never hear (`ivr bench turns`)
APT_PKGS=(libttspico-utils sox libsndfile1 espeak-ng mbrola mbrola-fr1 mbrola-fr4 mbrola-fr2 mbrola-fr6)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  step "Installing system packages: ${missing[*]}"
  # SVOX Pico (the offline French voice) lives in Debian's non-free component: add it beside the
  # host's own sources, same mirror, if it is not enabled yet.
  if ! grep -rqsE '^(Components:.*|deb .*)\bnon-free\b' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    src=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 || true)
    uri=""; suites=""
    if [ -n "$src" ]; then
      uri=$(awk '/^URIs:/{print $2; exit}' "$src")
      suites=$(awk '/^Suites:/{$1=""; print; exit}' "$src")
    elif [ -f /etc/apt/sources.list ]; then
      uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
      suites=$(awk '$1=="deb"{print $3; exit}' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || die "no Debian apt source found to add the non-free component (needed for libttspico-utils)"
    printf 'Types: deb\nURIs: %s\nSuites:%s\nComponents: non-free contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" "$suites" | $SUDO tee /etc/apt/sources.list.d/ivr-non-free.sources >/dev/null
    echo "added Debian non-free component ($uri)"
  fi
  $SUDO apt-get update -qq || die "apt-get update failed: check the network access to the Debian mirror"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed; run it by hand to see why"
fi

# --- Python --------------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  step "Creating the virtual environment in $VENV"
  "$PY" -m venv "$VENV" || die "could not create a venv with $PY (install python3-venv)"
fi
stamp="$VENV/.ivr-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "Installing Python packages"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e ".[test]" || die "pip install failed (see above)"
  touch "$stamp"
fi

# --- telephony: Asterisk 22 (sid chroot) and pjsua2 (built once, then cached in data/cache) -------
step "Asterisk (chroot in data/asterisk) and pjsua2"
scripts/asterisk.sh install
scripts/asterisk.sh configure
VENV="$VENV" scripts/build_pjsua2.sh
# SIPp and tcpdump: the test caller and desk, and what they hear (tests, demo, bench);
# Chromium: the browser the console's tests drive (Playwright, with Debian's binary);
# Kamailio and PostgreSQL: the front of several Asterisk boxes and the shared store (tests start
# their own; the packages' services stay off on this box)
if ! command -v sipp >/dev/null || ! command -v tcpdump >/dev/null || ! command -v chromium >/dev/null \
    || ! command -v kamailio >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends sip-tester tcpdump chromium \
    kamailio postgresql || die "apt-get install sip-tester tcpdump chromium kamailio postgresql failed"
  for svc in kamailio postgresql; do $SUDO invoke-rc.d "$svc" stop >/dev/null 2>&1 || true; done
  # nor at boot: the package's Kamailio would take port 5060 from Asterisk
  $SUDO systemctl disable --quiet kamailio >/dev/null 2>&1 \
    || $SUDO rm -f /etc/systemd/system/multi-user.target.wants/kamailio.service
fi

# --- models --------------------------------------------------------------------------------------
step "Provisioning models"
"$VENV/bin/ivr" models provision "$@"
# the console's first account (a generated password, printed this once; nothing if accounts exist)
"$VENV/bin/ivr" users init
step "Set-up complete"
