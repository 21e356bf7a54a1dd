#!/usr/bin/env python3
"""One scripted call to the running assistant: a recorded French question over SIP (SIPp), then what
the assistant heard and answered, from its call record."""
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio.pcm import read_audio  # noqa: E402
from ivr.config import load_config  # noqa: E402
from ivr.store import Store  # noqa: E402
from tests.sipcall import place_call  # noqa: E402

question, _ = read_audio(ROOT / "ivr/assets/demo_question.wav", 8000)
audio = np.concatenate([np.zeros(11 * 8000, np.int16), question, np.zeros(30 * 8000, np.int16)])
print("calling 100 with a recorded question (about 45 s)...")
r = place_call(audio, hangup_after=len(audio) / 8000)
if not r.answered:
    sys.exit("the call was not answered: is the assistant running (scripts/run.sh)?")
time.sleep(2)
store = Store(load_config().db_path)
call = store.call(store.recent_calls(1)[0]["id"])
for t in call["turns"]:
    who = "appelant " if t["speaker"] == "caller" else "assistant"
    print(f"{t['t_start']:6.1f} s  {who}  {t['text']}")
