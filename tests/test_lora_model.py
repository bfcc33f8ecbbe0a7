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


def folder_with_bundled_lora(tmp_path: Path) -> Path:
    """The tiny model's files linked into a folder whose `loras/` ships lora_a as `style-a`."""
    src, folder = fixture_dir("tiny-small"), tmp_path / "model"
    (folder / "loras").mkdir(parents=True)
    for name in ("model.safetensors", "model_config.json", "t5gemma-b-b-ul2"):
        (folder / name).symlink_to(src / name)
    (folder / "loras" / "style-a.safetensors").write_bytes((src / "lora" / "lora_a.safetensors").read_bytes())
    return folder


def test_loras_shipped_with_a_model_load_by_name(tmp_path: Path) -> None:
    folder = folder_with_bundled_lora(tmp_path)
    m = StableAudioModel.from_pretrained(folder, device="cpu")
    assert m.bundled_loras == {"style-a": folder / "loras" / "style-a.safetensors"}
    m.load_lora([fixture_dir("tiny-small") / "lora" / "lora_a.safetensors"])
    by_path = run(m)
    m.unload_lora()
    assert m.load_lora("style-a") == [0]
    assert torch.equal(run(m), by_path)
    m.unload_lora()
    with pytest.raises(LoraError, match=r"^load_lora: 'style-b' is neither a file nor a LoRA shipped with this "
                       r"model \(shipped: style-a\)$"):
        m.load_lora(["style-b"])
    assert model().bundled_loras == {}  # the golden folder ships none
