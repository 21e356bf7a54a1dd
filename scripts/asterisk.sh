#!/usr/bin/env bash
# Asterisk 22 (Debian sid package) in a chroot, for the town-hall voice assistant.
#
#   scripts/asterisk.sh install     debootstrap a sid chroot + asterisk (or restore the cached tarball)
#   scripts/asterisk.sh configure   replace the Debian defaults with asterisk-conf/*.conf and the
#                                   settings' trunk and TLS (ivr pbx config)
#   scripts/asterisk.sh start       start Asterisk and wait until it is fully booted
#   scripts/asterisk.sh stop        stop it
#   scripts/asterisk.sh status      is it running, which SIP contacts are registered
#
# Environment:
#   IVR_DATA             data folder, relative to the repo root (default: data)
#   IVR_DEBIAN_MIRROR    Debian mirror URI (default: taken from the host's apt sources)
#   ASTERISK_BOOT_TIMEOUT  seconds to wait for "core waitfullybooted" (default: 30)
#
# Debian 12 ships no asterisk package; sid does. Nothing from sid touches the host: it all
# lives under ${IVR_DATA}/asterisk/root. Every subcommand is idempotent.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
DATA=${IVR_DATA:-data}
case $DATA in /*) ;; *) DATA=$REPO/$DATA ;; esac
ROOT=$DATA/asterisk/root
CACHE=$DATA/cache
CONF_SRC=$REPO/asterisk-conf
MARKER=.ivr-asterisk-installed          # file at the chroot's top, written when install finished
BOOT_TIMEOUT=${ASTERISK_BOOT_TIMEOUT:-30}

say() { printf 'asterisk: %s\n' "$*"; }
die() { printf 'asterisk: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (chroot, debootstrap); re-run with sudo"

# Run a command inside the chroot with a clean environment.
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
# Asterisk CLI command (-rx) against the running daemon.
ast_cli() { in_root /usr/sbin/asterisk -rx "$*"; }

installed() { [ -f "$ROOT/$MARKER" ] && [ -x "$ROOT/usr/sbin/asterisk" ]; }
need_installed() { installed || die "no Asterisk chroot at $ROOT; run: scripts/asterisk.sh install"; }

asterisk_pid() {
    local pidfile=$ROOT/run/asterisk/asterisk.pid pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    # The pid must be an asterisk whose root is our chroot (not a recycled pid).
    [ "$(readlink "/proc/$pid/root")" = "$(readlink -f "$ROOT")" ] || return 1
    echo "$pid"
}
running() { asterisk_pid >/dev/null && ast_cli 'core show version' >/dev/null 2>&1; }

# shellcheck source=scripts/lib/debian_mirror.sh
. "$REPO/scripts/lib/debian_mirror.sh"

host_pkg() {  # host_pkg COMMAND PACKAGE: apt-get install PACKAGE unless COMMAND exists
    command -v "$1" >/dev/null 2>&1 && return 0
    say "installing host package $2"
    apt-get install -y -qq "$2" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$2" >/dev/null; } \
        || die "apt-get install $2 failed; check the host's apt sources and network, then retry"
}

latest_cache() { ls -1t "$CACHE"/asterisk-chroot-*.tar.zst 2>/dev/null | head -n1 || true; }

cmd_install() {
    if installed; then
        say "already installed: $(cat "$ROOT/$MARKER") in $ROOT"
        return
    fi
    [ -e "$ROOT" ] && die "$ROOT exists but is not a finished install; remove it (rm -rf $ROOT) and re-run install"
    host_pkg zstd zstd
    mkdir -p "$DATA/asterisk" "$CACHE"
    local tmp=$ROOT.partial t0=$SECONDS tarball m
    # Leftovers of an interrupted install: unmount what debootstrap may have left mounted.
    for m in $(awk -v p="$tmp/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do umount -l "$m" || true; done
    rm -rf "$tmp"
    tarball=$(latest_cache)
    if [ -n "$tarball" ]; then
        say "restoring chroot from cache $tarball"
        mkdir -p "$tmp"
        tar -C "$tmp" --numeric-owner --xattrs --xattrs-include='*' -I zstd -xpf "$tarball" \
            || die "cannot unpack $tarball (corrupt?); delete it and re-run install"
        mv "$tmp" "$ROOT"
        say "restored in $((SECONDS - t0)) s: $(cat "$ROOT/$MARKER")"
        return
    fi

    host_pkg debootstrap debootstrap
    local mirror; mirror=$(mirror_uri)
    say "debootstrap sid (minbase) from $mirror into $tmp"
    debootstrap --variant=minbase sid "$tmp" "$mirror" >"$DATA/asterisk/debootstrap.log" 2>&1 \
        || die "debootstrap failed (see $DATA/asterisk/debootstrap.log and $tmp/debootstrap/debootstrap.log); check the mirror $mirror"
    say "debootstrap done in $((SECONDS - t0)) s"

    # sid snapshots can carry an expired Release file: do not reject it.
    echo 'Acquire::Check-Valid-Until "false";' >"$tmp/etc/apt/apt.conf.d/99novaliduntil"
    # Keep packages from starting services inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    # The chroot copies the host's resolv.conf; apt needs it now, Asterisk must not use it later.
    local ROOT=$tmp
    say "installing asterisk in the chroot"
    in_root apt-get update -qq >"$DATA/asterisk/apt.log" 2>&1 \
        || die "apt-get update in the chroot failed (see $DATA/asterisk/apt.log)"
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        asterisk asterisk-modules >>"$DATA/asterisk/apt.log" 2>&1 \
        || die "apt-get install asterisk in the chroot failed (see $DATA/asterisk/apt.log)"
    # Smaller chroot and cache. To add packages later: point resolv.conf at a real
    # resolver, then apt-get update inside the chroot.
    in_root apt-get clean
    rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin
    echo 'nameserver 127.0.0.1' >"$tmp/etc/resolv.conf"
    local version; version=$(in_root dpkg-query -W -f='${Version}' asterisk)
    echo "asterisk $version" >"$tmp/$MARKER"
    mv "$tmp" "$DATA/asterisk/root"
    ROOT=$DATA/asterisk/root
    say "asterisk $version installed in $((SECONDS - t0)) s ($(du -sh "$ROOT" | cut -f1))"

    local out=$CACHE/asterisk-chroot-${version//[:~+]/_}.tar.zst
    say "caching the chroot as $out"
    tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -I 'zstd -T0 -3' -cpf "$out.tmp" . \
        || { rm -f "$out.tmp"; die "could not write the cache tarball $out (disk full?)"; }
    mv "$out.tmp" "$out"
    say "cache written ($(du -h "$out" | cut -f1)); install done in $((SECONDS - t0)) s"
}

cmd_configure() {
    need_installed
    ls "$CONF_SRC"/*.conf >/dev/null 2>&1 || die "no *.conf in $CONF_SRC"
    local etc=$ROOT/etc/asterisk
    # Keep Debian's sample configs once, out of the way: they would load every module.
    if [ -d "$etc" ] && [ ! -d "$ROOT/etc/asterisk.debian-dist" ]; then
        mv "$etc" "$ROOT/etc/asterisk.debian-dist"
        say "moved the Debian default configs to /etc/asterisk.debian-dist (in the chroot)"
    fi
    mkdir -p "$etc"
    # asterisk-conf/*.conf, the assistant's SIP secret (made once in data/secrets/, root only) and
    # what the settings add (operator trunk, TLS); stale files from earlier runs are removed.
    local py=${VENV:-$REPO/.venv}/bin/python
    [ -x "$py" ] || die "no virtual environment at ${VENV:-$REPO/.venv}; run scripts/setup.sh"
    "$py" -m ivr.cli pbx config --out "$etc" || die "the settings cannot be turned into an Asterisk configuration (see above)"
    # spool/mairie: the calls the assistant did not take, for its records (ivr/unserved.py); private
    mkdir -p "$ROOT/var/spool/asterisk/monitor" "$ROOT/var/spool/mairie" "$ROOT/var/log/asterisk" "$ROOT/run/asterisk"
    chmod 750 "$ROOT/var/spool/mairie"
    say "configured: $(cd "$etc" && ls *.conf | tr '\n' ' ')"
    if running; then
        ast_cli 'core reload' >/dev/null && say "running Asterisk reloaded (modules.conf changes need stop + start)"
    fi
}

cmd_start() {
    need_installed
    [ -d "$ROOT/etc/asterisk.debian-dist" ] || die "not configured yet; run: scripts/asterisk.sh configure"
    if running; then say "already running (pid $(asterisk_pid))"; return; fi
    # A dead daemon can leave its control socket and pid file behind.
    rm -f "$ROOT/run/asterisk/asterisk.ctl" "$ROOT/run/asterisk/asterisk.pid"
    mkdir -p "$ROOT/run/asterisk"
    local t0; t0=$(date +%s.%N)
    # Runs as root inside the chroot: "-U root" would drop capabilities and break the ASTdb.
    in_root /usr/sbin/asterisk >/dev/null 2>&1 \
        || die "asterisk did not start; see $ROOT/var/log/asterisk/messages.log"
    local begin=$SECONDS
    until [ -S "$ROOT/run/asterisk/asterisk.ctl" ] \
          && timeout 5 chroot "$ROOT" /usr/sbin/asterisk -rx 'core waitfullybooted' >/dev/null 2>&1; do
        if [ $((SECONDS - begin)) -ge "$BOOT_TIMEOUT" ]; then
            tail -n 15 "$ROOT/var/log/asterisk/messages.log" >&2 2>/dev/null || true
            die "Asterisk not fully booted after ${BOOT_TIMEOUT}s; see $ROOT/var/log/asterisk/messages.log (modules.conf order?)"
        fi
        if [ $((SECONDS - begin)) -ge 3 ] && ! asterisk_pid >/dev/null; then
            tail -n 15 "$ROOT/var/log/asterisk/messages.log" >&2 2>/dev/null || true
            die "Asterisk exited during boot; see $ROOT/var/log/asterisk/messages.log"
        fi
        sleep 0.1
    done
    say "started (pid $(asterisk_pid)), fully booted in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}') s"
}

cmd_stop() {
    installed || { say "not installed, nothing to stop"; return; }
    local pid
    if ! pid=$(asterisk_pid); then say "not running"; return; fi
    ast_cli 'core stop now' >/dev/null 2>&1 || true
    local i
    for i in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    if [ -d "/proc/$pid" ]; then
        say "still running after 'core stop now'; sending SIGTERM to pid $pid"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 30); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        [ -d "/proc/$pid" ] && die "Asterisk (pid $pid) does not stop; kill -9 $pid by hand"
    fi
    rm -f "$ROOT/run/asterisk/asterisk.ctl" "$ROOT/run/asterisk/asterisk.pid"
    say "stopped"
}

cmd_status() {
    if ! installed; then say "not installed ($ROOT)"; return 3; fi
    if ! running; then say "installed ($(cat "$ROOT/$MARKER")), not running"; return 3; fi
    say "running (pid $(asterisk_pid)), $(ast_cli 'core show uptime seconds' | awk -F': ' '/System uptime/ {print "up " $2 " s"}')"
    ast_cli 'pjsip show contacts'
}

case ${1:-} in
    install) cmd_install ;;
    configure) cmd_configure ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|configure|start|stop|status" >&2; exit 2 ;;
esac
