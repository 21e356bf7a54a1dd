#!/usr/bin/env bash
# Install the assistant as systemd services, started at boot and restarted when they fail or hang:
#   mairie-asterisk    the bundled Asterisk, in its chroot (not with [pbx] mode = "external")
#   mairie-assistant   `ivr serve`: ready once registered; a watchdog restarts it if its SIP loop or
#                      its audio stops for 5 s
#   mairie-console     `ivr console`
#
#   scripts/install_services.sh            install (after scripts/setup.sh), enable and start them
#   scripts/install_services.sh remove     stop, disable and remove them (data and user are kept)
#   scripts/install_services.sh status     their state
#
# The services run from this folder, as the system user "mairie" ($IVR_SERVICE_USER to change),
# with a read-only system: they write only to the data folder (and the corpus, edited from the console).
# Settings: ivr.toml here, or the file named by $IVR_CONFIG when this runs; $IVR_DATA moves the data.
# Logs: journalctl -u mairie-assistant (-u mairie-console, -u mairie-asterisk).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SVC_USER=${IVR_SERVICE_USER:-mairie}
UNITS=(mairie-asterisk mairie-assistant mairie-console)
UNIT_DIR=${IVR_UNIT_DIR:-/etc/systemd/system}

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (system user, units in $UNIT_DIR); re-run with sudo"
[ -d /run/systemd/system ] || die "systemd is not running on this machine (PID 1); use scripts/run.sh instead"

case "${1:-install}" in
  status)
    systemctl --no-pager status "${UNITS[@]/%/.service}" || true
    exit 0 ;;
  remove)
    systemctl disable --now "${UNITS[@]/%/.service}" 2>/dev/null || true
    for u in "${UNITS[@]}"; do rm -f "$UNIT_DIR/$u.service"; done
    systemctl daemon-reload
    say "removed (data in place; user $SVC_USER kept)"
    exit 0 ;;
  install) ;;
  *) die "usage: $0 [install|remove|status]" ;;
esac

[ -x .venv/bin/ivr ] || die "no .venv here: run scripts/setup.sh first"
# Paths as the assistant resolves them (settings file, $IVR_DATA), made absolute
eval "$(.venv/bin/python - <<'PY'
import shlex
from pathlib import Path
from ivr.config import load_config
c = load_config()
root = c["pbx"]["asterisk_root"] or str(c.data_dir / "asterisk" / "root")
# several communes: their folders are the knowledge the console edits
corpus = Path(c["paths"]["communes"]).resolve() if c["paths"]["communes"] else c.corpus_dir
for k, v in {"DATA": c.data_dir, "CORPUS": corpus, "MODE": c["pbx"]["mode"], "AST_ROOT": root,
             "RECORDINGS": c.recordings_dir}.items():
    print(f"{k}={shlex.quote(str(v))}")
PY
)"
CONFIG=""
if [ -n "${IVR_CONFIG:-}" ]; then CONFIG=$(readlink -f "$IVR_CONFIG"); fi

# The service user must reach the interpreter and the code (a Python under /root is not reachable)
PYBIN=$(readlink -f .venv/bin/python)
id -u "$SVC_USER" >/dev/null 2>&1 || useradd --system --user-group --home-dir "$DATA" --no-create-home \
    --shell /usr/sbin/nologin --comment "Assistant vocal de la mairie" "$SVC_USER"
for p in "$PYBIN" "$REPO/.venv/bin/ivr" "$REPO/ivr/cli.py"; do
  runuser -u "$SVC_USER" -- test -r "$p" \
    || die "$p is not readable by user $SVC_USER (a parent folder is private?). Install the project in a folder such as /opt/mairie-assistant, with a system Python (PYTHON=/usr/bin/python3 scripts/setup.sh)"
done

# Stop what scripts/run.sh may have started: the services take over
scripts/run.sh stop >/dev/null 2>&1 || true

# What the services write belongs to their user; secrets stay private (trunk password: root only)
mkdir -p "$DATA"/{recordings,logs,run,cache,secrets} "$RECORDINGS"
chown "$SVC_USER:$SVC_USER" "$DATA" "$DATA"/{recordings,logs,run,cache,secrets}
chown -R "$SVC_USER:$SVC_USER" "$DATA"/{recordings,logs,run} "$CORPUS" "$RECORDINGS"
find "$DATA/cache" -maxdepth 1 -mindepth 1 ! -name 'asterisk-chroot-*' ! -name 'pjsua2*' \
  -exec chown -R "$SVC_USER:$SVC_USER" {} +
for f in "$DATA"/ivr.db "$DATA"/ivr.db-wal "$DATA"/ivr.db-shm; do
  if [ -e "$f" ]; then chown "$SVC_USER:$SVC_USER" "$f"; chmod 600 "$f"; fi
done
chmod 750 "$DATA"
# the calls the assistant did not take, which Asterisk writes for its records (ivr/unserved.py)
UNSERVED=$AST_ROOT/var/spool/mairie
[ "$MODE" != external ] && mkdir -p "$UNSERVED" && chown "$SVC_USER:$SVC_USER" "$UNSERVED" && chmod 750 "$UNSERVED"
chmod 700 "$DATA/secrets"
if [ -f "$DATA/secrets/sip_password" ]; then chown "$SVC_USER:$SVC_USER" "$DATA/secrets/sip_password"; chmod 600 "$DATA/secrets/sip_password"; fi
# the console's HTTPS key and certificate, if any, and the alerts' SMTP password
for f in "$DATA"/secrets/console_* "$DATA"/secrets/console-tls "$DATA"/secrets/smtp_password; do
  [ -e "$f" ] && chown -R "$SVC_USER:$SVC_USER" "$f" && chmod -R go-rwx "$f"
done

# A private /tmp would hide a checkout under /tmp (a test clone): then the services share the system's
private_tmp=yes
for p in "$REPO" "$DATA" "$CORPUS" "$AST_ROOT"; do
  case $p/ in /tmp/*|/var/tmp/*) private_tmp=no ;; esac
done
[ $private_tmp = yes ] || say "WARNING: installed under /tmp, so the services get no private /tmp; install in /opt/mairie-assistant for real use"

env_lines="Environment=IVR_DATA=$DATA"
[ -n "$CONFIG" ] && env_lines+=$'\n'"Environment=IVR_CONFIG=$CONFIG"

# Shared by the two Python services: a read-only system, writes to the data folder and the corpus only
sandbox="NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths=$DATA $CORPUS $RECORDINGS
PrivateTmp=$private_tmp
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
UMask=0027"

ast_after=""
if [ "$MODE" != external ]; then
  scripts/asterisk.sh install
  scripts/asterisk.sh configure
  ast_after="mairie-asterisk.service"
  cat >"$UNIT_DIR/mairie-asterisk.service" <<UNIT
# Installed by $REPO/scripts/install_services.sh
[Unit]
Description=Asterisk du standard de la mairie
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
# chroot by hand, as scripts/asterisk.sh does: with RootDirectory= systemd would hide the chroot's /run,
# where the control socket that asterisk -rx and ivr doctor use lives
ExecStartPre=/bin/mkdir -p $AST_ROOT/run/asterisk
ExecStartPre=/bin/rm -f $AST_ROOT/run/asterisk/asterisk.ctl $AST_ROOT/run/asterisk/asterisk.pid
ExecStart=/usr/sbin/chroot $AST_ROOT /usr/sbin/asterisk -f
# the console's health checks (asterisk -rx) run as $SVC_USER: its group may use the control socket
ExecStartPost=+/bin/sh -c 'for i in \$(seq 100); do [ -S $AST_ROOT/run/asterisk/asterisk.ctl ] && break; sleep 0.1; done; chgrp $SVC_USER $AST_ROOT/run/asterisk/asterisk.ctl && chmod 660 $AST_ROOT/run/asterisk/asterisk.ctl'
Restart=always
RestartSec=1
TimeoutStopSec=15
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=$AST_ROOT/var $AST_ROOT/run $AST_ROOT/tmp
PrivateTmp=$private_tmp
PrivateDevices=yes
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
UNIT
else
  rm -f "$UNIT_DIR/mairie-asterisk.service"
fi

cat >"$UNIT_DIR/mairie-assistant.service" <<UNIT
# Installed by $REPO/scripts/install_services.sh
[Unit]
Description=Assistant vocal de la mairie (ivr serve)
After=network-online.target $ast_after
Wants=network-online.target $ast_after
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
User=$SVC_USER
Group=$SVC_USER
WorkingDirectory=$REPO
$env_lines
# two malloc arenas, not eight per core: the call threads' memory is reused instead of spread thin
Environment=MALLOC_ARENA_MAX=2
ExecStart=$REPO/.venv/bin/ivr serve
ReadWritePaths=-$UNSERVED
Restart=always
RestartSec=1
TimeoutStartSec=180
WatchdogSec=5
TimeoutAbortSec=3
TimeoutStopSec=20
$sandbox

[Install]
WantedBy=multi-user.target
UNIT

cat >"$UNIT_DIR/mairie-console.service" <<UNIT
# Installed by $REPO/scripts/install_services.sh
[Unit]
Description=Console web de la mairie (ivr console)
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
User=$SVC_USER
Group=$SVC_USER
WorkingDirectory=$REPO
$env_lines
ExecStart=$REPO/.venv/bin/ivr console
Restart=always
RestartSec=1
$sandbox
# its health checks ask Asterisk (asterisk -rx in the chroot): chroot is the one privilege it keeps
CapabilityBoundingSet=CAP_SYS_CHROOT
AmbientCapabilities=CAP_SYS_CHROOT

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
units=(mairie-assistant.service mairie-console.service)
[ "$MODE" != external ] && units=(mairie-asterisk.service "${units[@]}")
systemctl enable "${units[@]}" >/dev/null 2>&1
systemctl restart "${units[@]}" \
  || die "a service did not start: journalctl -u mairie-assistant -u mairie-console -n 50"
say "installed and running: ${units[*]}"
say "logs: journalctl -u mairie-assistant -f     state: scripts/install_services.sh status     check: .venv/bin/ivr doctor"
