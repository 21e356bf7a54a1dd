#!/usr/bin/env bash
# Set up everything, then run the assistant for real: Asterisk + `ivr serve` on this machine.
#   scripts/run.sh           set up, start Asterisk and the assistant, say how to call it
#   scripts/run.sh --demo    the same, then place one scripted call (a recorded French question)
#   scripts/run.sh stop      stop the assistant and Asterisk
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${IVR_DATA:-data}
PIDFILE=$DATA/serve.pid
LOG=$DATA/logs/serve.log

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

if [ "${1:-}" = stop ]; then
  if running; then kill "$(cat "$PIDFILE")" && echo "assistant stopped"; fi
  rm -f "$PIDFILE"
  scripts/asterisk.sh stop
  exit 0
fi

scripts/setup.sh
scripts/asterisk.sh start
mkdir -p "$(dirname "$LOG")"
if ! running; then
  nohup .venv/bin/ivr serve >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
fi
printf 'waiting for the assistant to register'
for _ in $(seq 120); do
  if scripts/asterisk.sh status 2>/dev/null | grep -qE 'assistant/.*Avail'; then break; fi
  running || { echo; echo "ERROR: ivr serve stopped; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
  printf '.'; sleep 1
done
echo
scripts/asterisk.sh status | grep -qE 'assistant/.*Avail' || { echo "ERROR: no registration; see $LOG" >&2; exit 1; }
cat <<TXT
The assistant answers the town hall number.
  Call it from a softphone on this machine: SIP account "caller", server 127.0.0.1:5060 (UDP, no
  password), then dial 100. A person's desk is extension 200 (sip:desk@127.0.0.1:5080).
  Logs: $LOG    Calls: .venv/bin/ivr calls list    Stop: scripts/run.sh stop
TXT
if [ "${1:-}" = --demo ]; then
  .venv/bin/python scripts/demo_call.py
fi
