#!/usr/bin/env bash
# fail2ban for the bundled Asterisk (docs/security.md): an address that fails 5 times within 10
# minutes (wrong SIP password, unknown account, request refused by the trunk's ACL, as written in
# Asterisk's security log) gets no answer from this server, on any port, for an hour.
#
#   scripts/install_fail2ban.sh                 install fail2ban and nftables if missing, the jail and its
#                                               filter (asterisk-conf/fail2ban) into /etc/fail2ban, then
#                                               (re)start fail2ban and show the jail
#   scripts/install_fail2ban.sh --etc DIR       a private fail2ban configuration in DIR instead (Debian's
#                                               files copied, only this jail, its own socket, pid and
#                                               database files in DIR); nothing is started (tests)
#   --logdir DIR                                Asterisk's log folder, where security.log and messages.log
#                                               are (default: the chroot's /var/log/asterisk)
#
# Environment: IVR_DATA (data folder, default data), VENV (default .venv). Idempotent; run it again
# after changing [trunk] (the operator's addresses are never banned).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
DATA=${IVR_DATA:-data}
case $DATA in /*) ;; *) DATA=$REPO/$DATA ;; esac
ROOT=$DATA/asterisk/root
SRC=$REPO/asterisk-conf/fail2ban
JAIL=mairie-asterisk
ETC=/etc/fail2ban
PRIVATE=""
LOGDIR=$ROOT/var/log/asterisk
TEMPLATE_LOGDIR=/opt/mairie/data/asterisk/root/var/log/asterisk

say() { printf 'fail2ban: %s\n' "$*"; }
die() { printf 'fail2ban: ERREUR / ERROR: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --etc) ETC=$2; PRIVATE=1; shift 2 ;;
        --logdir) LOGDIR=$2; shift 2 ;;
        *) die "unknown argument $1 (usage: $0 [--etc DIR] [--logdir DIR])" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "must run as root (packages, /etc/fail2ban, nftables); re-run with sudo"

# --- packages ------------------------------------------------------------------------------------
missing=()
command -v fail2ban-server >/dev/null 2>&1 || missing+=(fail2ban)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
python3 -c 'import pyinotify' 2>/dev/null || missing+=(python3-pyinotify)   # reads the log as it grows
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
        || die "apt-get install ${missing[*]} failed; check the apt sources and the network"
fi

# --- what goes into the jail ---------------------------------------------------------------------
# The operator's addresses ([trunk] match, else its server): never banned, a ban would cut the line.
operator=""
py=${VENV:-$REPO/.venv}/bin/python
if [ -x "$py" ]; then
    operator=$("$py" - <<'EOF' 2>/dev/null || true
from ivr.config import load_config
from ivr.pbx import _host_port, _networks
t = load_config()["trunk"]
if t["mode"] and t["server"]:
    print(" ".join(_networks(list(t["match"]) or [_host_port(t["server"])[0]])))
EOF
)
fi
# Asterisk writes its log lines in its chroot's local time, without a zone: tell fail2ban which one.
chroot_tz=$(readlink "$ROOT/etc/localtime" 2>/dev/null || true)
host_tz=$(readlink /etc/localtime 2>/dev/null || true)
case ${chroot_tz#*zoneinfo/} in
    ""|UTC|Etc/UTC|UCT|Etc/UCT|Universal|Etc/Universal|Zulu|Etc/Zulu|GMT|Etc/GMT|GMT0|Etc/GMT0) logtz="logtimezone = UTC" ;;
    *) logtz="# logtimezone: the chroot's zone (${chroot_tz#*zoneinfo/}), as the host's"
       [ "${chroot_tz#*zoneinfo/}" = "${host_tz#*zoneinfo/}" ] \
           || say "ATTENTION: Asterisk's chroot (${chroot_tz#*zoneinfo/}) and this host (${host_tz#*zoneinfo/}) have different time zones: fail2ban may misdate the log" ;;
esac

# --- files ---------------------------------------------------------------------------------------
if [ -n "$PRIVATE" ]; then
    mkdir -p "$ETC"
    ETC=$(cd "$ETC" && pwd)
    # Debian's configuration as it is (filters, actions), without its jails: only ours runs here
    cp -r /etc/fail2ban/. "$ETC/"
    rm -f "$ETC"/jail.d/* "$ETC"/jail.local "$ETC"/fail2ban.local
    printf '[Definition]\nlogtarget = %s\nsocket = %s\npidfile = %s\ndbfile = %s\n' \
        "$ETC/fail2ban.log" "$ETC/fail2ban.sock" "$ETC/fail2ban.pid" "$ETC/fail2ban.sqlite3" >"$ETC/fail2ban.local"
fi
install -d -m 755 "$ETC/filter.d" "$ETC/jail.d"
install -m 644 "$SRC/filter.d/$JAIL.conf" "$ETC/filter.d/$JAIL.conf"
sed -e "s|$TEMPLATE_LOGDIR/|$LOGDIR/|" \
    -e "s|^ignoreip = .*|ignoreip = 127.0.0.1/8 ::1${operator:+ $operator}|" \
    -e "s|^logtimezone = .*|$logtz|" \
    "$SRC/jail.d/$JAIL.conf" >"$ETC/jail.d/$JAIL.conf.tmp"
chmod 644 "$ETC/jail.d/$JAIL.conf.tmp"
mv "$ETC/jail.d/$JAIL.conf.tmp" "$ETC/jail.d/$JAIL.conf"
# fail2ban refuses a jail whose log does not exist yet (Asterisk makes security.log at its first event)
mkdir -p "$LOGDIR"
for f in security.log messages.log; do [ -e "$LOGDIR/$f" ] || install -m 640 /dev/null "$LOGDIR/$f"; done
say "jail $JAIL written to $ETC/jail.d/$JAIL.conf (logs in $LOGDIR${operator:+; never banned: $operator})"
[ -n "$PRIVATE" ] && exit 0

# --- Asterisk: the security log ------------------------------------------------------------------
ast() { chroot "$ROOT" /usr/sbin/asterisk -rx "$*" 2>/dev/null; }
if [ -x "$ROOT/usr/sbin/asterisk" ] && ast 'core show version' >/dev/null; then
    if ! ast 'module show like res_security_log' | grep -q res_security_log; then
        say "loading res_security_log in the running Asterisk (scripts/asterisk.sh configure writes it in modules.conf)"
        ast 'module load res_security_log.so' >/dev/null || true
    fi
    ast 'logger reload' >/dev/null || true
fi
grep -qs '^security.log' "$ROOT/etc/asterisk/logger.conf" \
    || say "ATTENTION: Asterisk does not write security.log yet: run scripts/asterisk.sh configure, then restart Asterisk"

# --- start ---------------------------------------------------------------------------------------
# Debian 12 enables the sshd jail, which reads /var/log/auth.log; without rsyslog that file does not
# exist and fail2ban would not start at all: read sshd's log from the journal instead.
if [ ! -e /var/log/auth.log ] && [ -d /run/systemd/system ] && [ ! -e "$ETC/jail.d/mairie-sshd-journal.conf" ]; then
    python3 -c 'import systemd.journal' 2>/dev/null || apt-get install -y -qq --no-install-recommends python3-systemd >/dev/null
    printf '# written by scripts/install_fail2ban.sh: no /var/log/auth.log on this host\n[sshd]\nbackend = systemd\n' \
        >"$ETC/jail.d/mairie-sshd-journal.conf"
fi
fail2ban-client -t >/dev/null || { fail2ban-client -t || true; die "fail2ban's configuration is refused (see above)"; }
if [ -d /run/systemd/system ]; then
    systemctl enable -q fail2ban
    systemctl restart fail2ban
elif fail2ban-client ping >/dev/null 2>&1; then
    fail2ban-client reload >/dev/null
else
    fail2ban-client start >/dev/null
fi
for _ in $(seq 50); do
    fail2ban-client status "$JAIL" >/dev/null 2>&1 && break
    sleep 0.2
done
fail2ban-client status "$JAIL" || die "the jail $JAIL is not running: see /var/log/fail2ban.log"
say "installed. Unban an address: fail2ban-client set $JAIL unbanip ADDRESS"
