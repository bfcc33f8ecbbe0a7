"""Acceptance tests of the shipped `demo` model (stable_audio_3/assets/demo): it follows its prompts
in measurable ways, and every generation mode works with it. Thresholds are those of issue 7; the
measured numbers are recorded in the model card (MODEL_CARD.md).

Pitch, levels, audio-to-audio and the LoRA are judged at the model's recommended settings (its
config's `default_steps` / `default_cfg_scale`: 32 steps, cfg 4, Euler), which generate(), the CLI,
the UI and the server all use when a call names none; inpainting and continuation at 8 steps, cfg 1
(`ev.EIGHT_STEPS_CFG_1`, passed explicitly), which the model card recommends for them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stable_audio_3 import StableAudioModel, vocabulary
from training.demo import evaluate as ev

DEMO = Path(__file__).resolve().parents[1] / "stable_audio_3" / "assets" / "demo"
MAX_SHIPPED_BYTES = 25 * 1024 * 1024
# The demo LoRA's bar: "changes something audible and measurable" (issue 7). Measured: 21/24 prompts an
# octave above the named pitch at the recommended settings (MODEL_CARD.md).
LORA_HIT_RATE = 0.75


@pytest.fixture(scope="module")
def model() -> StableAudioModel:
    torch.set_num_threads(2)
    return StableAudioModel.from_pretrained(DEMO, device="cpu")


@pytest.fixture(scope="module")
def recommended(model) -> StableAudioModel:
    """The model as generate() (and every other interface) samples it when a call names no settings:
    its card's 32 steps, cfg 4, Euler, 3 s."""
    d = model.defaults
    assert (d.steps, d.cfg_scale, d.sampler, d.duration) == (32, 4.0, "euler", 3.0)
    assert (model.recommended_steps, model.recommended_cfg_scale) == (32, 4.0)
    return model


def test_files_are_small_and_in_the_official_layout():
    config = json.loads((DEMO / "model_config.json").read_text())
    assert config["model_type"] == "diffusion_cond_inpaint"
    subfolder = config["model"]["conditioning"]["configs"][0]["config"]["subfolder"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (DEMO / subfolder / name).is_file(), name
    assert (DEMO / "MODEL_CARD.md").is_file()
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= MAX_SHIPPED_BYTES, f"demo assets are {total / 2**20:.1f} MiB"


def test_model_facts(model):
    assert model.sample_rate == 44100
    assert 6.0 <= model.max_duration <= 6.5
    assert model.default_duration == 3.0
    card = (DEMO / "MODEL_CARD.md").read_text()
    assert f"| maximum duration | {model.max_duration:.2f} s" in card and "| default duration | 3 s" in card
    # A plain flow model (not distilled): sampled with Euler, like the official -base models.
    assert model.is_base


def test_pitch_prompts_hit_the_named_pitch(recommended):
    assert len(ev.PITCH_PROMPTS) >= 20
    scores = ev.pitch_scores(recommended)
    misses = [r for r in scores["rows"] if not r["ok"]]
    assert scores["hit_rate"] >= 0.9, f"hit rate {scores['hit_rate']:.2f}; misses: {misses}"


def test_hz_prompts_hit_the_named_frequency(recommended):
    """Frequencies in Hz reach the model as note words (the tokenizer's `frequency_to_note`)."""
    hz = [f for _, f in ev.HZ_PROMPTS]
    assert len(ev.HZ_PROMPTS) >= 12 and min(hz) == 180 and max(hz) == 2000  # issue 22's whole range
    assert len({p.replace(str(round(f)), "{}") for p, f in ev.HZ_PROMPTS}) >= 5  # several phrasings
    scores = ev.pitch_scores(recommended, prompts=ev.HZ_PROMPTS)
    misses = [r for r in scores["rows"] if not r["ok"]]
    assert scores["hit_rate"] >= 0.9, f"hit rate {scores['hit_rate']:.2f}; misses: {misses}"


def test_drums_left_the_vocabulary_and_the_card(model):
    """The shipped model renders no drums (issue 22: no beat at its tempo, no audible hit), so its
    vocabulary and card leave them out, and a drum prompt warns instead of failing quietly."""
    unknown = vocabulary.unknown_words(model, "drum beat 120 bpm, kick drum, snare drum, hihat")
    assert [w for w, _ in unknown] == ["drum", "beat", "120", "bpm", "kick", "snare", "hihat"]
    card = (DEMO / "MODEL_CARD.md").read_text()
    listed = card.split("## Prompt vocabulary")[1].split("\n## ")[0]
    assert not [w for w in ("drum", "kick", "snare", "hihat", "bpm") if w in listed.lower()]
    assert "drum" not in card.split("**What it does well**")[1].split("**Where it falls short**")[0]


def test_unknown_words_warn_once_per_generate_call(model, caplog):
    fast = dict(ev.EIGHT_STEPS_CFG_1, steps=2, duration=1.0, seed=0)
    with caplog.at_level(logging.WARNING, logger="stable_audio_3"):
        model.generate(["whte noise", "lofi house loop", "whte noise"], **fast)
        model.generate("a sine tone at 440 Hz", **fast)  # every word known (or a filler word): no warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    for part in ("'whte' (nearest known: white)", "'lofi' (no similar known word)", "'house' (nearest known: noise)"):
        assert part in warnings[0]


def test_the_cli_prints_the_unknown_word_warning(tmp_path):
    out = tmp_path / "out.wav"
    args = ["-p", "whte noise", "--model", "demo", "--steps", "2", "--duration", "1", "-q", "-o", str(out)]
    result = subprocess.run([sys.executable, "-m", "stable_audio_3.cli", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "does not know" in line]
    assert len(lines) == 1 and "'whte' (nearest known: white)" in lines[0], result.stderr
    assert out.is_file()


def test_silence_and_noise_prompts_differ_in_level(recommended):
    levels = ev.level_scores(recommended)
    assert levels["difference_db"] >= 20, levels  # pink noise minus silence
    # Brown noise too; white noise is reported, not judged (MODEL_CARD.md: the autoencoder keeps ~3% of
    # its energy, and the shipped model renders it nearly silent).
    assert levels["brown_noise_dbfs"] - levels["silence_dbfs"] >= 20, levels


def test_generate_uses_the_model_defaults(recommended):
    """No settings named: generate() runs the card's settings, as the CLI, the UI and the server do."""
    audio = recommended.generate("sine a4", seed=1)
    assert audio.shape == (1, 2, 3 * 44100)  # the default duration
    explicit = recommended.generate("sine a4", seed=1, steps=32, cfg_scale=4.0, sampler_type="euler", duration=3.0)
    torch.testing.assert_close(audio, explicit, atol=0, rtol=0)


@pytest.fixture(scope="module")
def inpaint(model) -> dict:
    return ev.inpaint_scores(model, **ev.EIGHT_STEPS_CFG_1)


def test_inpainting_and_continuation_keep_the_given_audio(inpaint):
    plain = {k: v for k, v in inpaint.items() if "paste_back" not in k}
    assert len(plain) == 3 and all(v >= 15 for v in plain.values()), plain


def test_paste_back_keeps_the_given_audio_exactly(inpaint):
    pasted = {k: v for k, v in inpaint.items() if "paste_back" in k}
    assert len(pasted) == 3 and all(v >= 100 for v in pasted.values()), pasted


def test_kept_audio_is_measured_outside_the_regenerated_latent_frames():
    # [0.8, 1.4) s regenerates latents 9..15 (their first samples lie inside), i.e. samples up to
    # 16 * 4096 = 1.486 s: 86 ms past the region's end, which the measurement must leave out.
    assert ev.regenerated_span(0.8, 1.4) == (35280, 16 * 4096)
    assert ev.regenerated_span(2.0, 2.0) == (88200, 88200)  # continuation: nothing regenerated
    original = ev.tonal_input(2.0)
    damaged = original.clone()
    damaged[:, 61740:65536] = 0  # inside the regenerated span but outside the region
    assert ev.kept_snr(original, damaged, [(0.8, 1.4)]) > 100


@pytest.fixture(scope="module")
def a2a(recommended) -> dict:
    return ev.a2a_scores(recommended)


def test_audio_to_audio_at_low_noise_stays_close_to_its_input(a2a):
    assert a2a["a2a_0.1_snr_db"] >= 10, a2a


def test_audio_to_audio_at_full_noise_is_text_to_audio(a2a):
    assert a2a["a2a_1.0_equals_t2a"], a2a


def test_per_item_batch_matches_single_item_runs(model):
    """Per-item prompts, durations and seeds: each item equals the same request made alone."""
    fast = ev.EIGHT_STEPS_CFG_1
    audio = model.generate(["sine a4", "white noise"], duration=[2.0, 3.0], seed=[1, 2], **fast)  # lists: batch 2
    assert audio.shape == (2, 2, 3 * 44100)  # mixed durations: the longest one
    assert model.last_seeds == [1, 2]
    alone = model.generate("white noise", duration=3.0, seed=2, **fast)
    torch.testing.assert_close(audio[1], alone[0], atol=1e-4, rtol=0)


def test_demo_lora_raises_the_pitch_by_an_octave(model, recommended):
    assert set(model.bundled_loras) == {"octave-up"}
    scores = ev.lora_scores(recommended, "octave-up")
    assert scores["strength_0_equals_base"]
    misses = [r for r in scores["rows"] if not r["ok"]]
    assert scores["octave_up_hit_rate"] >= LORA_HIT_RATE, f"hit rate {scores['octave_up_hit_rate']:.2f}; {misses}"
