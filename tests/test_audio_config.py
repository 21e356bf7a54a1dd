import numpy as np
import pytest
import soundfile as sf

from audio.pcm import AudioError, read_audio, ulaw_decode, ulaw_encode
from ivr.config import ConfigError, load_config


def test_env_overrides_are_typed():
    cfg = load_config(env={"IVR_ASR__BEAM_SIZE": "1", "IVR_TTS__CACHE": "non", "IVR_DATA": "/tmp/x"})
    assert cfg["asr"]["beam_size"] == 1 and cfg["tts"]["cache"] is False
    assert str(cfg.data_dir) == "/tmp/x" and str(cfg.models_dir) == "/tmp/x/models"


def test_unknown_or_badly_typed_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no setting"):
        load_config(env={"IVR_ASR__BEEM_SIZE": "1"})
    with pytest.raises(ConfigError, match="expected a int"):
        load_config(env={"IVR_ASR__BEAM_SIZE": "five"})
    bad = tmp_path / "bad.toml"
    bad.write_text("[asr]\nbeam = 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(bad, env={})
    bad.write_text("[asr\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad, env={})


def test_stereo_44k_is_converted_to_mono_8k(tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "s.wav", np.stack([left, left], axis=1), 44100)
    pcm, info = read_audio(tmp_path / "s.wav", 8000)
    assert info["channels"] == 2 and info["source_rate"] == 44100
    assert len(pcm) == 8000 and pcm.dtype == np.int16 and np.abs(pcm).max() > 10000


def test_empty_corrupt_and_missing_files_give_clear_errors(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 3)
    with pytest.raises(AudioError, match="vide"):
        read_audio(tmp_path / "empty.wav", 8000)
    with pytest.raises(AudioError, match="corrompu"):
        read_audio(tmp_path / "bad.wav", 8000)
    with pytest.raises(AudioError, match="introuvable"):
        read_audio(tmp_path / "nope.wav", 8000)


def test_g711_round_trip_keeps_the_signal():
    t = np.arange(8000) / 8000
    pcm = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    back = ulaw_decode(ulaw_encode(pcm))
    assert len(back) == len(pcm)
    assert np.corrcoef(pcm, back)[0, 1] > 0.999
