"""LoRA through StableAudioModel: exact strength 0 / unload, runtime strength, refused files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden import fixture_dir

from stable_audio_3 import StableAudioModel
from stable_audio_3.models.lora import LoraError

_MODEL: dict[str, StableAudioModel] = {}


def model() -> StableAudioModel:
    if "m" not in _MODEL:
        _MODEL["m"] = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu")
    return _MODEL["m"]


def run(m: StableAudioModel) -> torch.Tensor:
    return m.generate("lofi house loop", duration=1.0, seed=42, return_latents=True)


def weights(m: StableAudioModel) -> dict[str, torch.Tensor]:
    sd = {f"dit.{k}": v.clone() for k, v in m.dit.state_dict().items()}
    sd |= {f"cond.{k}": v.clone() for k, v in m.conditioner.state_dict().items()}
    return sd


def test_strength_zero_unload_and_runtime_strength() -> None:
    m = model()
    base, base_weights = run(m), weights(m)
    lora_a = fixture_dir("tiny-small") / "lora" / "lora_a.safetensors"
    assert m.load_lora([lora_a]) == [0]
    try:
        full = run(m)
        assert not torch.equal(full, base)
        m.set_lora_strength(0.0)
        assert torch.equal(run(m), base)  # strength 0 is the base model exactly
        m.set_lora_strength(0.5)
        half = run(m)
        assert not torch.equal(half, base) and not torch.equal(half, full)
        m.set_lora_strength(1.0)
        assert torch.equal(run(m), full)  # takes effect on the next call, no reload
    finally:
        m.unload_lora()
    assert torch.equal(run(m), base)
    after = weights(m)
    assert after.keys() == base_weights.keys()
    assert all(torch.equal(after[k], base_weights[k]) for k in after)


def test_lora_for_another_model_is_refused_and_model_unchanged() -> None:
    m = model()
    base = run(m)
    wrong = fixture_dir("tiny-medium") / "lora" / "lora_a.safetensors"  # differential DiT: other shapes
    with pytest.raises(LoraError) as err:
        m.load_lora([wrong])
    assert "lora_a.safetensors" in str(err.value)
    assert len(m.loras) == 0
    assert torch.equal(run(m), base)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x00" * 64])
def test_corrupt_lora_file_is_refused(tmp_path: Path, content: bytes) -> None:
    m = model()
    base = run(m)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(LoraError, match="bad.safetensors"):
        m.load_lora([bad])
    assert torch.equal(run(m), base)


def test_truncated_lora_file_is_refused(tmp_path: Path) -> None:
    m = model()
    data = (fixture_dir("tiny-small") / "lora" / "lora_a.safetensors").read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoraError, match="truncated.safetensors"):
        m.load_lora([bad])
    assert len(m.loras) == 0
