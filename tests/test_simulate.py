"""`ivr simulate`: a recorded caller through VAD, ASR, dialogue and TTS, as a user runs it."""
import json
import subprocess
import sys

import numpy as np
import pytest

from audio.pcm import read_audio, rms_dbfs, write_wav
from ivr.simulate import run_session_on_audio
from ivr.store import Store
from tests.conftest import ROOT, caller_voice, with_silence

IVR = [sys.executable, "-m", "ivr.cli"]


def run_ivr(args, tmp_path, **kw):
    env = {"IVR_DATA": str(tmp_path), "IVR_PATHS__MODELS": str(ROOT / "data" / "models"),
           "IVR_PATHS__CORPUS": str(ROOT / "corpus"), "IVR_PATHS__CACHE": str(ROOT / "data" / "cache"),
           "PATH": "/usr/bin:/bin"}
    return subprocess.run(IVR + args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, **kw)


def test_simulate_bundled_question_prints_transcript_and_writes_french_reply(tmp_path, engines):
    out = tmp_path / "reply.wav"
    p = run_ivr(["simulate", "ivr/assets/demo_question.wav", "--json", "--out", str(out),
                 "--at", "2026-12-01T10:00"], tmp_path)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    # "Bonjour." [pause] "Je voudrais savoir à quelle heure ouvre la mairie, samedi.": the greeting,
    # if heard as a turn of its own, is greeted back (not "je n'ai pas compris")
    k = next(i for i, t in enumerate(res["turns"]) if t["action"] == "answer")
    turn = res["turns"][k]
    assert all(t["action"] == "greeting" and t["text"] == "Bonjour, je vous écoute." for t in res["turns"][:k])
    assert "mairie" in turn["transcript"].lower() and "samedi" in turn["transcript"].lower()
    assert turn["action"] == "answer" and turn["theme"] == "mairie_pratique"
    assert set(turn["latency_ms"]) >= {"asr", "dialogue", "tts_first"}
    # the greeting, the pause after it and the one before "samedi" do not split it: one turn, one answer
    assert k == 0 and "bonjour" in turn["transcript"].lower(), res["turns"]
    assert [t["action"] for t in res["turns"]].count("answer") == 1, res["turns"]
    pcm, info = read_audio(out, 8000)
    assert info["seconds"] > 5 and rms_dbfs(pcm) > -40
    heard = engines.transcriber.transcribe(pcm[-int(25 * 8000):], 8000).text.lower()
    assert "samedi" in heard or "heure" in heard, heard
    call = Store(tmp_path / "ivr.db").call(res["call_id"])
    assert call["status"] == "ended" and call["recording"]
    speakers = [t["speaker"] for t in call["turns"]]
    assert speakers.count("caller") == k + 1 and speakers.count("assistant") >= k + 2


def test_two_questions_in_one_call(engines):
    rate = 8000
    q1 = caller_voice("Comment faire une demande de passeport ?")
    q2 = caller_voice("Non merci, au revoir.")
    audio = np.concatenate([with_silence(q1, rate, 0.3, 0.2), np.zeros(rate * 12, np.int16),
                            with_silence(q2, rate, 0.3, 1.5)])
    s = run_session_on_audio(engines, audio)
    actions = [t["action"] for t in s.turns if t["transcript"] is not None]
    assert actions[0] == "answer" and s.turns[0]["entry_id"].startswith("identite.")
    assert actions[-1] == "goodbye"


def test_a_short_pause_mid_question_does_not_cut_it(engines):
    rate = 8000
    a, b = caller_voice("Je voudrais savoir,"), caller_voice("quels sont les horaires de la piscine ?")
    a = a[: np.nonzero(np.abs(a) > 500)[0][-1]]           # then exactly 450 ms of silence: a pause, not an end
    audio = np.concatenate([with_silence(a, rate, 0.3, 0.0), np.zeros(int(rate * 0.45), np.int16),
                            with_silence(b, rate, 0.0, 1.5)])
    s = run_session_on_audio(engines, audio)
    first = next(t for t in s.turns if t["transcript"])
    assert "voudrais" in first["transcript"].lower() and "piscine" in first["transcript"].lower(), first
    assert first["entry_id"] == "sport_culture_loisirs.piscine_horaires"
    assert not any(e.type == "reply" and "piscine" not in e.data["text"].lower() and e.data["action"] != "greeting"
                   for e in s.events[:next(i for i, e in enumerate(s.events) if e.type == "reply" and
                                            e.data["action"] == "answer")])      # nothing said to the first half


def test_the_greeting_is_short(engines):
    from ivr.session import CallSession

    s = CallSession(engines, transport="test", inline=True)
    frames = 0
    while s.speaking:
        s.pull_audio()
        frames += 1
    s.close("test_end")
    assert frames * s.frame_s < 8.0        # commune, recorded call, the way to a person: under 8 s


def test_a_question_over_the_greeting_keeps_its_first_words(engines):
    rate = 8000
    q = caller_voice("Bonjour, je voudrais connaître les horaires de la piscine.")
    audio = np.concatenate([np.zeros(rate, np.int16), q, np.zeros(rate * 2, np.int16)])   # 1 s into the greeting
    s = run_session_on_audio(engines, audio, wait_for_greeting=False)
    assert any(e.type == "barge-in" for e in s.events)
    first = next(t for t in s.turns if t["transcript"])
    words = first["transcript"].lower()
    assert "bonjour" in words and "voudrais" in words, first
    assert first["entry_id"] == "sport_culture_loisirs.piscine_horaires"


def test_the_line_echo_is_not_the_caller_but_the_caller_over_it_is_heard(engines):
    """A line that sends our voice back 12 dB down, 60 ms late; the caller starts 2.5 s into the
    greeting, 5 dB below our voice (louder than the echo, quieter than us)."""
    from audio.pcm import rms_dbfs
    from ivr.session import CallSession

    rate = 8000
    s = CallSession(engines, transport="test", inline=True)
    q = caller_voice("Bonjour, je voudrais les horaires de la piscine.")
    ours = rms_dbfs(engines.speaker.say(s.conversation.greet().text))
    q = (q * 10 ** ((ours - 5 - rms_dbfs(q)) / 20)).astype(np.int16)
    caller = np.concatenate([np.zeros(int(2.5 * rate), np.int16), q, np.zeros(rate * 3, np.int16)])
    caller = caller[: len(caller) // 160 * 160]
    line = [np.zeros(160, np.int16)] * 3
    rng = np.random.default_rng(0)
    for i in range(0, len(caller), 160):
        line.append(s.pull_audio())
        echo = line.pop(0).astype(np.float64) * 10 ** (-12 / 20) + rng.normal(0, 20, 160)
        s.push_audio(np.clip(echo + caller[i:i + 160], -32768, 32767).astype(np.int16))
    s.close("test_end")
    barge = [e.t for e in s.events if e.type == "barge-in"]
    assert barge and barge[0] > 2.5, barge                  # the echo alone did not interrupt us
    said = [t["transcript"].lower() for t in s.turns if t["transcript"]]
    assert said and "bonjour" in said[0] and "piscine" in said[0], said


class SlowTranscriber:
    """Stands in for an overloaded machine (which cannot be made on purpose here): the real
    transcriber, 8 s late."""

    def __init__(self, real, delay_s: float):
        self.real, self.delay_s = real, delay_s

    def __getattr__(self, name):
        return getattr(self.real, name)

    def transcribe(self, *a, **kw):
        import time

        time.sleep(self.delay_s)
        return self.real.transcribe(*a, **kw)


class BusyTranscriber(SlowTranscriber):
    """Stands in for a machine whose ASR replicas are all taken by other calls (which cannot be made
    on purpose here): the real transcriber, never reporting a free replica."""

    def __init__(self, real):
        super().__init__(real, 0.0)

    def has_spare(self, alone: bool = False) -> bool:
        return False


@pytest.mark.parametrize("load", ["idle", "replicas_taken", "more_calls_than_replicas"])
def test_the_turn_is_guessed_at_the_early_pause_only_when_the_machine_has_time(engines, load):
    import dataclasses

    other_calls = {"other-1", "other-2", "other-3"} if load == "more_calls_than_replicas" else set()
    # the end of the turn after a fixed silence: the guess at the later pause, when the early one is not made
    eng = dataclasses.replace(engines, live=other_calls, turn_model=None)
    if load == "replicas_taken":
        eng = dataclasses.replace(eng, transcriber=BusyTranscriber(engines.transcriber))
    s = run_session_on_audio(eng, with_silence(caller_voice("Quels sont les horaires de la mairie ?"), 8000, 0.3, 1.5))
    guesses = [e.data for e in s.events if e.type == "asr-guess"]
    asr = next(e.data for e in s.events if e.type == "asr")
    early = load == "idle"          # alone on an idle machine: whatever the number of replicas
    assert guesses and guesses[-1]["early"] is early and any(g["early"] for g in guesses) is early, guesses
    assert asr["speculative"] is True and "horaires" in asr["text"].lower(), asr
    assert s.call_id not in eng.live and eng.live == other_calls        # the call left when it ended


def test_no_reprompt_while_a_turn_is_processed_and_the_timer_starts_after_the_answer(engines):
    import dataclasses
    import time

    from ivr.session import CallSession

    slow = dataclasses.replace(engines, transcriber=SlowTranscriber(engines.transcriber, 6.0))
    s = CallSession(slow, transport="test")
    rate, frame, zeros = 8000, 160, np.zeros(160, np.int16)
    # a pause mid-sentence: the early transcription is stale and the turn transcribes again
    a = caller_voice("Bonjour.")
    a = a[: np.nonzero(np.abs(a) > 500)[0][-1]]
    audio = np.concatenate([np.zeros(rate // 2, np.int16), a, np.zeros(int(rate * 0.45), np.int16),
                            with_silence(caller_voice("Quels sont les horaires de la mairie ?"), rate, 0.0, 0.0)])
    while s.speaking or s._busy:                 # the greeting is said (the caller waits for it)
        s.push_audio(zeros)
        s.pull_audio()
    i, deadline = 0, time.monotonic() + 90
    while time.monotonic() < deadline:           # the call clock runs ~4x real time; the ASR is slow
        s.push_audio(audio[i:i + frame] if i < len(audio) else zeros)
        i += frame
        s.pull_audio()
        time.sleep(0.004)
        if len([e for e in s.events if e.type == "reply"]) >= 3:     # greeting, answer, reprompt
            break
    s.close("test_end")
    kinds = [(e.type, e.t) for e in s.events if e.type in ("reply", "silence", "asr")]
    replies = [t for k, t in kinds if k == "reply"]
    silences = [t for k, t in kinds if k == "silence"]
    assert len(replies) >= 2 and silences, kinds                     # the answer, then a reprompt
    assert not [t for t in silences if t < replies[1]], kinds        # none while the turn was processed
    loud = [k * 0.02 for k, f in enumerate(s._rec_out) if np.abs(f).max() > 100]
    for t in silences:                                   # a reprompt comes 7 s after we stopped talking
        assert t - max(x for x in loud if x < t) >= 6.9, (kinds, t)


def test_silence_only_invents_nothing_and_reprompts(tmp_path):
    wav = tmp_path / "silence.wav"
    write_wav(wav, np.zeros(8000 * 10, np.int16), 8000)
    p = run_ivr(["simulate", str(wav), "--json", "--no-greeting"], tmp_path)
    assert p.returncode == 0, p.stderr
    turns = json.loads(p.stdout)["turns"]
    assert all(t["transcript"] in ("", None) for t in turns)
    assert turns and turns[0]["action"] == "clarify" and "entends pas" in turns[0]["text"]


@pytest.mark.parametrize("content, message", [(b"", "vide"), (b"RIFF1234WAVEfmt garbage" * 4, "corrompu")])
def test_bad_files_give_a_clear_error_without_traceback(tmp_path, content, message):
    wav = tmp_path / "bad.wav"
    wav.write_bytes(content)
    p = run_ivr(["simulate", str(wav)], tmp_path)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_missing_model_names_the_setup_command(tmp_path):
    env_models = tmp_path / "no-models"
    env = {"IVR_DATA": str(tmp_path), "IVR_PATHS__MODELS": str(env_models),
           "IVR_PATHS__CORPUS": str(ROOT / "corpus"), "IVR_PATHS__CACHE": str(ROOT / "data" / "cache"),
           "PATH": "/usr/bin:/bin"}
    p = subprocess.run(IVR + ["simulate", "ivr/assets/demo_question.wav"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 2 and "scripts/setup.sh" in p.stderr and "Traceback" not in p.stderr


def test_stereo_44k_input_is_converted(tmp_path):
    import soundfile as sf

    pcm, _ = read_audio(ROOT / "ivr/assets/demo_question.wav", 44100)
    stereo = np.stack([pcm, pcm], axis=1)
    sf.write(tmp_path / "st.wav", stereo, 44100)
    p = run_ivr(["simulate", str(tmp_path / "st.wav"), "--json", "--at", "2026-12-01T10:00"], tmp_path)
    assert p.returncode == 0, p.stderr
    said = [t["transcript"].lower() for t in json.loads(p.stdout)["turns"] if t["transcript"]]
    assert any("samedi" in t for t in said), said        # ("Bonjour." [0.7 s] "Je voudrais…": two turns)


def test_say_lets_staff_hear_an_answer_as_callers_do(tmp_path, engines):
    out = tmp_path / "say.wav"
    p = run_ivr(["say", "--entry", "sport_culture_loisirs.piscine_horaires", "--at", "2026-12-01T10:00",
                 "--out", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "aujourd'hui mardi de douze heures à treize heures trente" in p.stdout   # as spoken, normalised
    pcm, info = read_audio(out, 8000)
    assert info["seconds"] > 10 and rms_dbfs(pcm) > -40
    assert "piscine" in engines.transcriber.transcribe(pcm[: 8000 * 8], 8000).text.lower()
    p = run_ivr(["say", "--entry", "piscine", "--out", str(out)], tmp_path)
    assert p.returncode == 1 and p.stderr.strip() == "Erreur : fiche inconnue : piscine (voir corpus/faq/*.yaml)"


def test_a_number_said_digit_by_digit_with_pauses_is_one_turn(engines):
    from ivr.session import CallSession

    s = CallSession(engines, transport="test", inline=True)
    rate, zeros = 8000, np.zeros(160, np.int16)

    def play(pcm):
        replies = len([e for e in s.events if e.type == "reply"])
        for k in range(0, len(pcm), 160):
            s.push_audio(pcm[k:k + 160] if len(pcm[k:k + 160]) == 160 else zeros)
            s.pull_audio()
        for _ in range(3000):                     # until the reply to it has been said
            s.push_audio(zeros)
            s.pull_audio()
            if len([e for e in s.events if e.type == "reply"]) > replies and not s.speaking:
                break

    play(np.zeros(160, np.int16))                 # the greeting
    for said in ["Il y a un lampadaire en panne dans ma rue.", "Au douze, rue des Tanneurs.",
                 "Il est éteint depuis trois jours."]:
        play(with_silence(caller_voice(said), rate, 0.3, 0.0))
    assert s.conversation.expects == "phone" and s.segmenter.end_silence_ms == 1500
    gap = np.zeros(int(rate * 0.9), np.int16)     # longer than a turn's 600 ms end silence
    groups = ["zéro, six", "un, deux", "trois, quatre", "cinq, six", "sept, huit"]
    trim = lambda a: a[np.nonzero(np.abs(a) > 300)[0][0]: np.nonzero(np.abs(a) > 300)[0][-1]]  # noqa: E731
    number = np.concatenate([x for g in groups for x in (trim(caller_voice(g + ".")), gap)])
    n_asr = len([e for e in s.events if e.type == "asr"])
    play(np.concatenate([np.zeros(rate // 3, np.int16), number]))
    heard = [e for e in s.events if e.type == "asr"][n_asr:]
    s.close("test_end")
    assert len(heard) == 1, heard                 # one turn, not five
    digits = "".join(c for c in heard[0].data["text"] if c.isdigit())
    assert len(digits) >= 8 and digits.startswith("0"), heard
    assert s.segmenter.end_silence_ms == 600      # back to normal once the number is taken


def test_warming_up_loads_what_the_first_turns_would_otherwise_wait_for(engines):
    """`ivr serve` warms before registering; a lazily loaded resource is a first caller's wait (the
    French word list of the near-miss correction took 0.4-1 s on the first misheard word)."""
    from dialogue.search import french_words
    from ivr.app import warm_engines

    french_words.cache_clear()
    took = warm_engines(engines)
    assert set(took) == {"vad", "turn", "asr", "dialogue", "tts"}
    assert french_words.cache_info().currsize == 1
