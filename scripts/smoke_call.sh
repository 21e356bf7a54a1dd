#!/usr/bin/env bash
# Smoke test of the town-hall PBX failover: with no assistant registered, a call to the
# town-hall number (100) must reach the desk.
#
#   caller (SIPp UAC, From: caller, 127.0.0.1:5070, plays G.711 audio)
#     -> Asterisk 127.0.0.1:5060, extension 100 -> no assistant -> desk
#     -> desk (SIPp UAS, 127.0.0.1:5080, echoes RTP)
#
# Checks: both SIPp ends complete the call, the desk received Asterisk's INVITE, and RTP
# flowed both ways through Asterisk (caller -> desk echo -> caller). Everything started
# here is stopped on exit; Asterisk too, unless it was already running.
# Logs stay in ${IVR_DATA:-data}/smoke/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
DATA=${IVR_DATA:-data}
case $DATA in /*) ;; *) DATA=$REPO/$DATA ;; esac
ROOT=$DATA/asterisk/root
WORK=$DATA/smoke
CALLER_USER=caller          # the From user pjsip.conf identifies as endpoint "caller"
CALL_SECONDS=${SMOKE_CALL_SECONDS:-4}

say() { printf 'smoke: %s\n' "$*"; }
die() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (Asterisk runs in a chroot); re-run with sudo"

UAS_PID= UAC_PID= STARTED_ASTERISK=
cleanup() {
    local rc=$?
    for pid in $UAC_PID $UAS_PID; do
        if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    done
    if [ -n "$STARTED_ASTERISK" ]; then scripts/asterisk.sh stop || true; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! command -v sipp >/dev/null 2>&1; then
    say "installing sip-tester (SIPp)"
    apt-get install -y -qq sip-tester >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq sip-tester >/dev/null; } \
        || die "apt-get install sip-tester failed; check the host's apt sources"
fi
PCAP_DIR=/usr/share/sip-tester
[ -f "$PCAP_DIR/g711a.pcap" ] || die "$PCAP_DIR/g711a.pcap missing; reinstall sip-tester"

for port in 5070 5080; do
    ! ss -Hlun "sport = :$port" | grep -q . || die "UDP port $port is in use; stop what holds it (ss -lunp 'sport = :$port')"
done

scripts/asterisk.sh install
scripts/asterisk.sh configure
if ! scripts/asterisk.sh status >/dev/null 2>&1; then
    STARTED_ASTERISK=1
    scripts/asterisk.sh start
fi
ast() { chroot "$ROOT" /usr/sbin/asterisk -rx "$*"; }

if ast 'pjsip show contacts' | grep -qE '^ *Contact: +assistant/'; then
    die "an assistant is registered; this failover test needs none (stop the assistant, or wait for its registration to expire)"
fi

rm -rf "$WORK"; mkdir -p "$WORK"
# SIPp's built-in caller with audio, made to present itself as the configured caller,
# to play the packaged pcaps, and to hang up after CALL_SECONDS.
{ sipp -sd uac_pcap || true; } \
    | sed -e "/^ *From:/s/sipp <sip:sipp@/$CALLER_USER <sip:$CALLER_USER@/" \
          -e "s|\"pcap/|\"$PCAP_DIR/|" \
          -e "s|<pause milliseconds=\"8000\"/>|<pause milliseconds=\"$((CALL_SECONDS * 1000))\"/>|" \
    >"$WORK/caller.xml"
grep -q "From: $CALLER_USER <sip:$CALLER_USER@" "$WORK/caller.xml" || die "could not rewrite the From user in SIPp's uac_pcap scenario"

say "desk: SIPp UAS on 127.0.0.1:5080 (RTP echo on 6100)"
sipp -sn uas -i 127.0.0.1 -p 5080 -mi 127.0.0.1 -mp 6100 -rtp_echo -m 1 -nostdin \
    -timeout 30s -timeout_error -trace_msg -message_file "$WORK/desk_messages.log" \
    -trace_err -error_file "$WORK/desk_errors.log" >"$WORK/desk.out" 2>&1 &
UAS_PID=$!
for _ in $(seq 50); do ss -Hlun 'sport = :5080' | grep -q . && break; sleep 0.1; done
ss -Hlun 'sport = :5080' | grep -q . || die "the desk (SIPp UAS) did not bind 127.0.0.1:5080; see $WORK/desk.out"

say "caller: SIPp UAC from 127.0.0.1:5070 calls 100 (${CALL_SECONDS}s of audio)"
t0=$(date +%s.%N)
sipp -sf "$WORK/caller.xml" -s 100 127.0.0.1:5060 -i 127.0.0.1 -p 5070 -mi 127.0.0.1 -mp 6000 -m 1 -nostdin \
    -timeout 30s -timeout_error -trace_msg -message_file "$WORK/caller_messages.log" \
    -trace_err -error_file "$WORK/caller_errors.log" >"$WORK/caller.out" 2>&1 &
UAC_PID=$!

# Mid-call, read Asterisk's RTP counters for both legs.
sleep $((CALL_SECONDS / 2 + 1))
ast 'pjsip show channelstats' >"$WORK/channelstats.txt" 2>&1 || true
ast 'core show channels concise' >"$WORK/channels.txt" 2>&1 || true

uac_rc=0; wait "$UAC_PID" || uac_rc=$?; UAC_PID=
t1=$(date +%s.%N)
uas_rc=0; wait "$UAS_PID" || uas_rc=$?; UAS_PID=

fail=
[ "$uac_rc" = 0 ] || { say "caller: SIPp exited $uac_rc (see $WORK/caller_messages.log, caller_errors.log)"; fail=1; }
[ "$uas_rc" = 0 ] || { say "desk: SIPp exited $uas_rc (see $WORK/desk_messages.log, desk_errors.log)"; fail=1; }
if grep -q '^INVITE sip:desk@127.0.0.1:5080' "$WORK/desk_messages.log" 2>/dev/null; then
    say "desk received the INVITE from Asterisk (failover to the desk works)"
else
    say "the desk never received an INVITE"; fail=1
fi
grep -q "^BYE " "$WORK/desk_messages.log" 2>/dev/null || { say "the desk never received the BYE"; fail=1; }

# channelstats rows: "<bridge> <endpoint>-<n> <uptime> <codec> <rx count> <lost> <pct> <jitter> <tx count> ...".
# Both legs must have received and sent packets: caller audio reached the desk, the echo came back.
legs=$(awk '$2 ~ /^(caller|desk)-/ { split($2, a, "-"); print a[1] ":" $5 ":" $9 }' "$WORK/channelstats.txt" | sort)
if [ "$(echo "$legs" | awk -F: '$2 > 0 && $3 > 0' | wc -l)" = 2 ]; then
    say "RTP through Asterisk, packets rx/tx per leg: $(echo "$legs" | tr '\n' ' ')"
else
    say "no two-way RTP seen on both legs (pjsip show channelstats: $WORK/channelstats.txt)"; fail=1
fi

[ -z "$fail" ] || die "failover call did not complete; logs in $WORK"
say "PASS: call to 100 without assistant answered by the desk in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s (call with ${CALL_SECONDS}s of audio)"
