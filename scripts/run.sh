#!/usr/bin/env bash
# Set up everything, then run the assistant for real: Asterisk + `ivr serve` + `ivr console`.
#   scripts/run.sh           set up, start Asterisk, the assistant and the console, say how to use them
#   scripts/run.sh --demo    the same, then place one scripted call (a recorded French question)
#   scripts/run.sh stop      stop the console, the assistant and Asterisk
# With [pbx] mode = "external" (the town hall's own PBX, docs/pbx.md) no Asterisk is started here.
set -euo pipefail   # (grep -q would end a pipe early: pipefail would then see SIGPIPE)
cd "$(dirname "$0")/.."
DATA=${IVR_DATA:-data}
PIDFILE=$DATA/serve.pid
LOG=$DATA/logs/serve.log
CPIDFILE=$DATA/console.pid
CLOG=$DATA/logs/console.log

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
console_running() { [ -f "$CPIDFILE" ] && kill -0 "$(cat "$CPIDFILE")" 2>/dev/null; }

if [ "${1:-}" = stop ]; then
  if console_running; then kill "$(cat "$CPIDFILE")" && echo "console stopped"; fi
  if running; then kill "$(cat "$PIDFILE")" && echo "assistant stopped"; fi
  rm -f "$PIDFILE" "$CPIDFILE"
  scripts/asterisk.sh stop
  exit 0
fi

if [ -d /run/systemd/system ] && systemctl is-active --quiet mairie-assistant 2>/dev/null; then
  echo "The assistant runs as services here (scripts/install_services.sh): systemctl status mairie-assistant" >&2
  exit 0
fi
scripts/setup.sh
MODE=$(.venv/bin/python -c "from ivr.config import load_config; print(load_config()['pbx']['mode'])")
[ "$MODE" = external ] || scripts/asterisk.sh start
mkdir -p "$(dirname "$LOG")"
touch "$LOG"
FROM=$(($(wc -c <"$LOG") + 1))
if running; then FROM=1; else
  nohup .venv/bin/ivr serve >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
fi
registered() {
  if [ "$MODE" = external ]; then tail -c +"$FROM" "$LOG" | grep -E 'registration: 2[0-9][0-9]' >/dev/null
  else scripts/asterisk.sh status 2>/dev/null | grep -E 'assistant/.*Avail' >/dev/null; fi
}
printf 'waiting for the assistant to register'
for _ in $(seq 120); do
  if registered; then break; fi
  running || { echo; echo "ERROR: ivr serve stopped; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
  printf '.'; sleep 1
done
echo
registered || { echo "ERROR: no registration; see $LOG (ivr doctor says more)" >&2; exit 1; }
if ! console_running; then
  nohup .venv/bin/ivr console >>"$CLOG" 2>&1 &
  echo $! >"$CPIDFILE"
fi
URL=$(.venv/bin/python -c "from ivr.config import load_config; c = load_config()['console']; print(f\"http://{c['bind']}:{c['port']}/connexion\")")
for _ in $(seq 30); do
  .venv/bin/python -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$URL" 2>/dev/null && break
  console_running || { echo "ERROR: ivr console stopped; see $CLOG" >&2; tail -20 "$CLOG" >&2; exit 1; }
  sleep 1
done
cat <<TXT
The assistant answers the town hall number.
  Call it from a softphone on this machine: SIP account "caller", server 127.0.0.1:5060 (UDP, no
  password), then dial 100. A person's desk is extension 200 (sip:desk@127.0.0.1:5080).
  Logs: $LOG    Calls: .venv/bin/ivr calls list    Stop: scripts/run.sh stop
The console (switchboard staff and admins): $URL
  Log in as "admin" with the password printed by the first set-up (forgotten: .venv/bin/ivr users
  password admin). Add people with: .venv/bin/ivr users add NAME --role agent|admin
TXT
if [ "${1:-}" = --demo ]; then
  .venv/bin/python scripts/demo_call.py
fi
