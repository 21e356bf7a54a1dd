#!/usr/bin/env bash
# Build the pjsua2 Python bindings (the assistant's SIP endpoint) and install them into a venv.
#
# Debian packages no pjproject, and the PyPI packages are broken or unshippable. Debian's
# asterisk *source* package carries a pjproject snapshot (component "orig-Xpjproject"): we
# fetch it from sid through a private apt source list (the host's apt setup is untouched),
# build pjproject statically with -fPIC (no LD_LIBRARY_PATH needed at run time), generate the
# SWIG bindings with the venv's Python and package them as a wheel.
#
# Features: SIP over TLS (OpenSSL, Debian's libssl-dev) and SRTP (Debian's libsrtp2-dev, through
# pjproject's --with-external-srtp; the dfsg repack has no bundled libsrtp). pjproject itself is
# linked statically into the extension; libssl/libcrypto (libssl3) and libsrtp2 (libsrtp2-1) are
# Debian's shared libraries, so the script installs those runtime packages too (fast path
# included). verify() checks that the installed module opens a TLS transport and has SRTP.
#
# The wheel is cached in ${IVR_DATA:-data}/cache/pjsua2-<pjproject version>+tls.srtp/ (wheel
# version <pjproject version>+tls.srtp): a second run installs it in seconds without network.
# Wheels cached without that feature tag (e.g. an older pjsua2-2.17/, no SRTP) are never reused.
# PJSUA2_REFRESH=1 checks sid for a newer snapshot.
#
# Environment:
#   VENV            virtualenv to install into (default: .venv, relative to the repo root)
#   IVR_DATA        data folder (default: data)
#   IVR_DEBIAN_MIRROR  Debian mirror URI (default: taken from the host's apt sources)
#   PJSUA2_REFRESH=1   ignore the cached wheel if sid has a different snapshot
#   JOBS            parallel make jobs (default: 2)
#   KEEP_BUILD=1    keep the build tree in ${IVR_DATA}/build/
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
DATA=${IVR_DATA:-data}
case $DATA in /*) ;; *) DATA=$REPO/$DATA ;; esac
VENV=${VENV:-.venv}
case $VENV in /*) ;; *) VENV=$REPO/$VENV ;; esac
CACHE=$DATA/cache
APTDIR=$CACHE/apt-sid-src          # private apt state: lists, cache, source list
JOBS=${JOBS:-2}
PY=$VENV/bin/python
# Build features as a PEP 440 local version label: part of the cache folder, the wheel's file name
# and its version, so a wheel built with other options is neither picked up nor mistaken for this.
FEATURES=tls.srtp
RUNTIME_PKGS=(libssl3 libsrtp2-1)

say() { printf 'pjsua2: %s\n' "$*"; }
die() { printf 'pjsua2: ERROR: %s\n' "$*" >&2; exit 1; }
T0=$SECONDS

[ -x "$PY" ] || die "no Python at $PY; create the venv first (python3 -m venv $VENV) or set VENV="

PYTAG=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
PLAT=$("$PY" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Install those of the named Debian packages that are missing (as root; otherwise say what to do).
apt_install_missing() {
    local p missing=()
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    [ "$(id -u)" = 0 ] || die "missing host packages: ${missing[*]}; install them (sudo apt-get install ${missing[*]}) or run as root"
    say "installing host packages: ${missing[*]}"
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${missing[@]}" >/dev/null; } \
        || die "apt-get install ${missing[*]} failed; check the host's apt sources"
}

# Import the module, create a TLS transport (self-signed certificate, 127.0.0.1, port 0) and check
# that SRTP is compiled in (crypto suites listed, an account with SRTP mandatory accepted).
verify() {
    local out ver tmp problems
    tmp=$(mktemp -d)
    if command -v openssl >/dev/null; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
            -keyout "$tmp/key.pem" -out "$tmp/cert.pem" >/dev/null 2>&1 \
            || { rm -rf "$tmp"; die "openssl req -x509 (the test certificate of verify) failed"; }
    fi
    cat >"$tmp/verify.py" <<'EOF'
import os, sys
import pjsua2 as pj
d = sys.argv[1]
ep = pj.Endpoint(); ep.libCreate()
ec = pj.EpConfig()
ec.uaConfig.threadCnt = 0; ec.uaConfig.mainThreadOnly = True
ec.logConfig.level = 0; ec.logConfig.consoleLevel = 0
ep.libInit(ec)
ep.audDevManager().setNullDev()
problems = []
ciphers = ep.utilSslGetAvailableCiphers()
if not ciphers:
    problems.append("no TLS (built without an SSL backend, PJ_HAS_SSL_SOCK=0)")
else:
    tc = pj.TransportConfig(); tc.boundAddress = "127.0.0.1"; tc.port = 0
    if os.path.exists(os.path.join(d, "cert.pem")):
        tc.tlsConfig.certFile = os.path.join(d, "cert.pem")
        tc.tlsConfig.privKeyFile = os.path.join(d, "key.pem")
    try:
        tid = ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tc)
        print("CHECK TLS transport on %s (%d ciphers, %s)" % (ep.transportGetInfo(tid).localName, len(ciphers),
              "self-signed certificate" if tc.tlsConfig.certFile else "no certificate: openssl CLI absent"))
    except pj.Error as e:
        problems.append("TLS transport creation failed: %s" % e.info())
suites = list(ep.srtpCryptoEnum())
if not suites:
    problems.append("no SRTP (built without PJMEDIA_HAS_SRTP: no crypto suites)")
else:
    print("CHECK SRTP crypto suites: %s" % ", ".join(suites))
    ac = pj.AccountConfig(); ac.idUri = "sip:verify@127.0.0.1"
    ac.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_MANDATORY; ac.mediaConfig.srtpSecureSignaling = 1
    acc = pj.Account()
    try:
        acc.create(ac)
        print("CHECK account with srtpUse=PJMEDIA_SRTP_MANDATORY, srtpSecureSignaling=1 accepted")
        acc.shutdown()
    except pj.Error as e:
        problems.append("account with srtpUse=PJMEDIA_SRTP_MANDATORY refused: %s" % e.info())
    del acc
print("VERSION " + ep.libVersion().full)
ep.libDestroy()
for p in problems:
    print("PROBLEM " + p)
sys.exit(1 if problems else 0)
EOF
    if ! out=$(cd / && "$PY" "$tmp/verify.py" "$tmp" 2>&1); then
        rm -rf "$tmp"
        problems=$(printf '%s\n' "$out" | sed -n 's/^PROBLEM //p' | paste -sd ';' -)
        [ -n "$problems" ] && die "pjsua2 in $VENV lacks TLS/SRTP: $problems"
        printf '%s\n' "$out" | tail -n 20 >&2
        die "import pjsua2 or the TLS/SRTP check failed in $VENV (see above)"
    fi
    rm -rf "$tmp"
    # pjlib logs to stdout too; keep the lines printed by the test itself.
    ver=$(printf '%s\n' "$out" | sed -n 's/^VERSION //p' | tail -n1)
    [ -n "$ver" ] || { printf '%s\n' "$out" | tail -n 20 >&2; die "pjsua2 imported but printed no version"; }
    printf '%s\n' "$out" | sed -n 's/^CHECK /pjsua2:   /p'
    say "verified: import pjsua2, TLS transport, SRTP, libVersion $ver ($VENV)"
}

install_wheel() {
    "$PY" -m pip install -q --no-index --no-deps --force-reinstall "$1" \
        || die "pip install $1 into $VENV failed"
    say "installed $(basename "$1") into $VENV"
}

# --- fast path: a cached wheel for this Python ------------------------------------------------
# Only wheels carrying this script's feature tag: a plain pjsua2-2.17/ (no SRTP) is ignored.
cached_wheel() {
    ls -1 "$CACHE"/pjsua2-*+"$FEATURES"/pjsua2-*+"$FEATURES"-"$PYTAG"-"$PYTAG"-"$PLAT".whl 2>/dev/null \
        | sort -V | tail -n1 || true
}
if [ "${PJSUA2_REFRESH:-0}" != 1 ]; then
    whl=$(cached_wheel)
    if [ -n "$whl" ]; then
        apt_install_missing "${RUNTIME_PKGS[@]}"
        ver=$(basename "$(dirname "$whl")"); ver=${ver#pjsua2-}
        have=$("$PY" -c 'import importlib.metadata as m; print(m.version("pjsua2"))' 2>/dev/null || true)
        if [ "$have" = "$ver" ] && (cd / && "$PY" -c 'import pjsua2' 2>/dev/null); then
            say "pjsua2 $ver already installed in $VENV (cached wheel $whl)"
        else
            say "using cached wheel $whl"
            install_wheel "$whl"
        fi
        verify
        say "done in $((SECONDS - T0)) s"
        exit 0
    fi
fi

# --- host build dependencies ------------------------------------------------------------------
# openssl (the CLI) makes the self-signed certificate that verify() tests the TLS transport with.
apt_install_missing build-essential swig xz-utils pkg-config libssl-dev libsrtp2-dev openssl "${RUNTIME_PKGS[@]}"

# Python headers of the venv's interpreter (pyenv, not Debian's python3-dev).
PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$PYINC/Python.h" ] || die "no Python.h in $PYINC for $PY; install that interpreter's headers (Debian python: apt-get install python3-dev; pyenv: reinstall the version)"
PYCONFIG=$(dirname "$(readlink -f "$PY")")/python3-config
if [ -x "$PYCONFIG" ]; then
    "$PYCONFIG" --includes | grep -q -- "-I$PYINC" || die "$PYCONFIG disagrees with $PY about the include dir ($PYINC)"
fi

# --- source: the pjproject component of Debian sid's asterisk source package -----------------
# shellcheck source=scripts/lib/debian_mirror.sh
. "$REPO/scripts/lib/debian_mirror.sh"
MIRROR=$(mirror_uri)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || die "$KEYRING missing; apt-get install debian-archive-keyring"
mkdir -p "$APTDIR"/lists/partial "$APTDIR"/cache/archives/partial "$APTDIR"/parts "$APTDIR"/src
echo "deb-src [signed-by=$KEYRING] $MIRROR sid main" >"$APTDIR/sources.list"
APT=(apt-get -q -o Dir::Etc::sourcelist="$APTDIR/sources.list" -o Dir::Etc::sourceparts="$APTDIR/parts"
     -o Dir::State::Lists="$APTDIR/lists" -o Dir::Cache="$APTDIR/cache"
     -o Acquire::Check-Valid-Until=false -o APT::Sandbox::User=root)

say "fetching the sid source index from $MIRROR (private apt state in $APTDIR)"
"${APT[@]}" update >"$APTDIR/update.log" 2>&1 || die "apt-get update of the sid deb-src list failed (see $APTDIR/update.log)"
rm -f "$APTDIR"/src/*
uri_line=$(cd "$APTDIR/src" && "${APT[@]}" source --print-uris asterisk 2>/dev/null | grep -- "^'.*-Xpjproject\.tar" || true)
[ -n "$uri_line" ] || die "sid's asterisk source package has no orig-Xpjproject component any more; see $APTDIR/update.log"
tarname=$(echo "$uri_line" | awk '{print $2}')
tarsum=$(echo "$uri_line" | awk '{print $4}')

tarball=
for f in "$CACHE"/pjsua2-*/"$tarname"; do [ -f "$f" ] && tarball=$f && break; done
if [ -z "$tarball" ]; then
    say "downloading the asterisk source package (apt-get source --download-only asterisk)"
    (cd "$APTDIR/src" && "${APT[@]}" source --download-only asterisk >"$APTDIR/source.log" 2>&1) \
        || die "apt-get source --download-only asterisk failed (see $APTDIR/source.log)"
    tarball=$APTDIR/src/$tarname
    [ -f "$tarball" ] || die "$tarname not among the downloaded files in $APTDIR/src"
fi
echo "${tarsum#SHA256:}  $tarball" | sha256sum -c --quiet - 2>/dev/null \
    || die "checksum mismatch for $tarball (expected $tarsum); delete it and re-run"

BUILD=$DATA/build/pjsua2
rm -rf "$BUILD"; mkdir -p "$BUILD"
tar -C "$BUILD" -xf "$tarball"
SRC=$(find "$BUILD" -mindepth 1 -maxdepth 1 -type d | head -n1)
[ -f "$SRC/version.mak" ] || die "no version.mak in $tarball"
PJVER=$(make -s --no-print-directory -f - <<<"$(printf 'include %s/version.mak\nall:\n\t@echo $(PJ_VERSION)\n' "$SRC")")
[ -n "$PJVER" ] || die "could not read PJ_VERSION from $SRC/version.mak"
OUT=$CACHE/pjsua2-$PJVER+$FEATURES
mkdir -p "$OUT"
[ -f "$OUT/$tarname" ] || cp "$tarball" "$OUT/$tarname"
rm -f "$APTDIR"/src/*                       # the other components are not needed
echo "$tarname ${tarsum} $(basename "$SRC")" >"$OUT/source.txt"
say "pjproject $PJVER ($(basename "$SRC")) from $tarname"

WHL=$OUT/pjsua2-$PJVER+$FEATURES-$PYTAG-$PYTAG-$PLAT.whl
if [ -f "$WHL" ]; then
    say "the wheel for this snapshot is already cached"
    rm -rf "$BUILD"
    install_wheel "$WHL"; verify; say "done in $((SECONDS - T0)) s"; exit 0
fi

# --- build ------------------------------------------------------------------------------------
cd "$SRC"
# The dfsg repack dropped this Windows-only source, but the makefile still lists it.
[ -f pjmedia/src/pjmedia-audiodev/bdimad_dev.c ] || : >pjmedia/src/pjmedia-audiodev/bdimad_dev.c
# pjsua takes at most 4 calls unless told otherwise at compile time; the assistant takes up to
# [sip] max_calls (8 by default) and refuses the rest itself.
printf '#define PJSUA_MAX_CALLS 32\n' >pjlib/include/pj/config_site.h
# No devices, video or bundled codecs: the assistant moves 8 kHz PCM frames itself,
# with the null audio device; the removed codecs are not in the repacked source anyway.
# TLS: OpenSSL (autodetected, checked below). SRTP: Debian's libsrtp2 (no third_party/srtp here).
say "configure (static, -fPIC, TLS with OpenSSL, SRTP with the external libsrtp2)"
t=$SECONDS
CFLAGS="-O2 -fPIC" CXXFLAGS="-O2 -fPIC" ./configure --prefix="$BUILD/install" \
    --disable-video --disable-sound --disable-gsm-codec --disable-speex-codec --disable-speex-aec \
    --disable-ilbc-codec --disable-g7221-codec --with-external-srtp --disable-resample --disable-opus \
    --disable-libwebrtc --disable-opencore-amr --disable-silk --disable-bcg729 --disable-sdl \
    --disable-ffmpeg --disable-v4l2 --disable-openh264 --disable-libyuv --disable-upnp \
    >"$BUILD/configure.log" 2>&1 || die "configure failed (see $BUILD/configure.log)"
grep -q '^#define PJ_SSL_SOCK_IMP PJ_SSL_SOCK_IMP_OPENSSL' pjlib/include/pj/compat/os_auto.h \
    || die "configure did not select OpenSSL for TLS (see $BUILD/configure.log; libssl-dev installed?)"
grep -q 'PJMEDIA_EXTERNAL_SRTP=2' pjmedia/build/os-auto.mak \
    || die "configure did not select the external libsrtp2 (see $BUILD/configure.log; libsrtp2-dev installed?)"
say "make dep + make -j$JOBS (about 3 minutes on 2 cores)"
make dep >"$BUILD/make.log" 2>&1 || die "make dep failed (see $BUILD/make.log)"
make -j"$JOBS" >>"$BUILD/make.log" 2>&1 || die "make failed (see $BUILD/make.log)"
make install >>"$BUILD/make.log" 2>&1 || die "make install (into $BUILD/install) failed (see $BUILD/make.log)"
say "pjproject built in $((SECONDS - t)) s"

say "SWIG bindings for $("$PY" -V 2>&1) ($PYINC)"
t=$SECONDS
make -C pjsip-apps/src/swig/python PYTHON_EXE="$PY" >"$BUILD/swig.log" 2>&1 \
    || die "building the SWIG Python module failed (see $BUILD/swig.log)"
LIBDIR=$(ls -d pjsip-apps/src/swig/python/build/lib.* 2>/dev/null | head -n1)
[ -n "$LIBDIR" ] && [ -f "$LIBDIR/pjsua2.py" ] && ls "$LIBDIR"/_pjsua2*.so >/dev/null 2>&1 \
    || die "no pjsua2.py/_pjsua2*.so after the SWIG build (see $BUILD/swig.log)"
if ldd "$LIBDIR"/_pjsua2*.so | grep 'libpj' >/dev/null; then
    die "_pjsua2 links pjproject shared libraries; expected a static build"
fi
for lib in libssl.so libcrypto.so libsrtp2.so; do
    ldd "$LIBDIR"/_pjsua2*.so | grep -q "$lib" || die "_pjsua2 does not link $lib (see $BUILD/swig.log)"
done
say "SWIG module built in $((SECONDS - t)) s"

# Debug info is 80% of the module (36 MB -> 7 MB).
strip --strip-unneeded "$LIBDIR"/_pjsua2*.so
# Package the two files as a wheel (no 'wheel' package needed), so pip can list/uninstall it.
"$PY" - "$LIBDIR" "$WHL.tmp" "$PJVER+$FEATURES" "$PYTAG" "$PLAT" <<'EOF'
import base64, hashlib, os, sys, zipfile
libdir, out, ver, tag, plat = sys.argv[1:]
dist = f"pjsua2-{ver}.dist-info"
files = {name: open(os.path.join(libdir, name), "rb").read()
         for name in os.listdir(libdir) if name == "pjsua2.py" or name.startswith("_pjsua2")}
files[f"{dist}/METADATA"] = (f"Metadata-Version: 2.1\nName: pjsua2\nVersion: {ver}\n"
    "Summary: pjsua2 SWIG bindings of pjproject (from Debian's asterisk source package), static build, "
    "TLS (OpenSSL) and SRTP (libsrtp2)\n"
    "Home-page: https://www.pjsip.org\nLicense: GPL-2.0-or-later\n").encode()
files[f"{dist}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: build_pjsua2.sh\nRoot-Is-Purelib: false\n"
    f"Tag: {tag}-{tag}-{plat}\n").encode()
def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{n},{digest(d)},{len(d)}\n" for n, d in files.items()) + f"{dist}/RECORD,,\n"
files[f"{dist}/RECORD"] = record.encode()
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in files.items():
        info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (0o755 if name.endswith(".so") else 0o644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, data)
EOF
mv "$WHL.tmp" "$WHL"
say "cached $WHL ($(du -h "$WHL" | cut -f1))"
cd "$REPO"
[ "${KEEP_BUILD:-0}" = 1 ] || { rm -rf "$BUILD"; rmdir "$DATA/build" 2>/dev/null || true; }

install_wheel "$WHL"
verify
say "done in $((SECONDS - T0)) s"
