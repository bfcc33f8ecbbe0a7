"""Precision tiers: what "auto" picks and refuses, what each tier loads, and the quality gates on the
trained demo model for every tier "auto" can pick on a CPU: (a) one DiT forward against float32 at
t = 1, 0.5, 0.1 >= 30 dB, (b) the SAME decoder alone >= 25 dB, (c) the demo evaluation agrees with
float32: at most one of the 24 pitch prompts changes its verdict, the noise / silence levels and the
inpainting kept-audio SNRs within 1 dB. (Gates (a) and (b) at full size: benchmarks/bench_generate.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden import fixture_dir

from stable_audio_3 import StableAudioModel, precision
from stable_audio_3.models.quant import Int8Linear, int8_available
from stable_audio_3.precision import (
    AUTO,
    DECODER_GATE_DB,
    DIT_GATE_DB,
    TIERS,
    cpu_features,
    cpu_has_int8_dot,
    decoder_gate,
    dit_gate,
    machine_class,
    resolve_precision,
)
from training.demo import evaluate as ev

DEMO = Path(__file__).resolve().parents[1] / "stable_audio_3" / "assets" / "demo"
CPU = torch.device("cpu")
CPU_AUTO_TIERS = sorted({tier for key, tier in AUTO.items() if key.startswith("cpu") and tier != "float32"})
needs_int8 = pytest.mark.skipif(not (int8_available() and cpu_has_int8_dot()),
                                reason="no exact CPU int8 matmul here (this PyTorch build or a CPU without VNNI)")


def test_int8_tiers_are_refused_without_vnni_and_auto_picks_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without int8 dot-product instructions the int8 matrix multiply saturates: no int8
    tier there, explicit or automatic."""
    avx2_only = {name: name == "avx2" for name in precision.CPU_FEATURES}
    monkeypatch.setattr(precision, "cpu_features", lambda: avx2_only)
    assert machine_class(CPU) == "cpu-avx2" and resolve_precision("auto", CPU) == "float32"
    for tier in ("int8", "int8-bf16"):
        with pytest.raises(ValueError, match=rf"^precision='{tier}' needs a CPU with int8 dot-product instructions "
                                             r"\(AVX512-VNNI, AVX-VNNI or AMX-INT8\); without them .* This CPU: AVX2 "
                                             r"\(no AVX-512, .*\)\. Use 'auto' or 'float32'$"):
            resolve_precision(tier, CPU)
    # float16's refusal suggests only tiers this CPU can run.
    with pytest.raises(ValueError, match=r"^precision='float16' is for GPUs: .*; use 'auto' or 'bfloat16'$"):
        resolve_precision("float16", CPU)
    with_vnni = dict(avx2_only, avx_vnni=True)
    monkeypatch.setattr(precision, "cpu_features", lambda: with_vnni)
    assert machine_class(CPU) == "cpu-vnni" and resolve_precision("auto", CPU) == "int8"
    with pytest.raises(ValueError, match=r"^precision='float16' is for GPUs: .*; use 'auto', 'bfloat16' or "
                                         r"'int8-bf16'$"):
        resolve_precision("float16", CPU)


def test_auto_is_looked_up_from_the_machine_and_bad_values_are_refused() -> None:
    assert set(cpu_features()) >= {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"}
    assert resolve_precision("auto", CPU) == AUTO[machine_class(CPU)]
    assert resolve_precision("auto", torch.device("cuda")) == "float16"
    assert set(AUTO.values()) <= set(TIERS)
    with pytest.raises(ValueError, match=r"^precision='int4' is invalid; allowed: 'auto', 'float32', 'bfloat16', "
                                         r"'float16', 'int8', 'int8-bf16'$"):
        resolve_precision("int4", CPU)
    with pytest.raises(ValueError, match=r"^precision='int8-bf16' \(int8\) runs on the CPU only; device='cuda'"):
        resolve_precision("int8-bf16", torch.device("cuda"))
    with pytest.raises(ValueError, match=r"^precision='float16' is for GPUs"):
        resolve_precision("float16", CPU)
    with pytest.raises(ValueError, match=r"^precision='int8' and dtype='float32' were both given"):
        StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", precision="int8", dtype="float32")


@needs_int8
def test_int8_tier_loads_int8_blocks_bf16_rest_and_refuses_loras() -> None:
    m = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", precision="int8-bf16")
    assert m.precision == "int8-bf16"
    block = m.dit.transformer.layers[0]
    int8 = {name: module.rotate for name, module in block.named_modules() if isinstance(module, Int8Linear)}
    assert int8 == {"self_attn.to_qkv": 16, "cross_attn.to_q": 16, "cross_attn.to_out": 16, "ff.ff.0.proj": 16}
    assert any(isinstance(module, Int8Linear) for module in m.autoencoder.decoder.modules())
    assert m.dit.dtype == torch.bfloat16 and next(m.autoencoder.parameters()).dtype == torch.bfloat16
    assert m.dit.to_timestep_embed[0].weight.dtype == torch.float32  # t is not rounded to bf16
    audio = m.generate("lofi house loop", duration=2.0, seed=4, steps=4)
    assert audio.shape == (1, 2, 2 * m.sample_rate) and audio.dtype == torch.float32 and torch.isfinite(audio).all()
    with pytest.raises(ValueError, match=r"^load_lora: this model was loaded with precision='int8-bf16', whose int8"):
        m.load_lora("any.safetensors")


@needs_int8
def test_int8_tier_with_a_float32_rest_converts_every_per_step_layer() -> None:
    """With the DiT's other layers in float32 the feed-forward and self-attention outputs run int8
    too; every int8 input is turned by Hadamard blocks; only prepare()'s once-per-run projections
    stay float."""
    m = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", precision="int8")
    block = m.dit.transformer.layers[0]
    int8 = {name: module.rotate for name, module in block.named_modules() if isinstance(module, Int8Linear)}
    assert int8 == dict.fromkeys(["self_attn.to_qkv", "self_attn.to_out", "cross_attn.to_q", "cross_attn.to_out",
                                  "ff.ff.0.proj", "ff.ff.2"], 16)
    assert type(block.cross_attn.to_kv) is torch.nn.Linear and m.dit.dtype == torch.float32
    audio = m.generate("lofi house loop", duration=2.0, seed=4, steps=4)
    assert audio.shape == (1, 2, 2 * m.sample_rate) and torch.isfinite(audio).all()


# -- the gates on the trained demo model ----------------------------------------------------------

_MODELS: dict[str, StableAudioModel] = {}
_EVALUATIONS: dict[str, dict] = {}


def demo(tier: str) -> StableAudioModel:
    if tier not in _MODELS:
        _MODELS[tier] = StableAudioModel.from_pretrained(DEMO, device="cpu", precision=tier)
    return _MODELS[tier]


def evaluation(tier: str) -> dict:
    """The demo evaluation's judged numbers (the model card's settings)."""
    if tier not in _EVALUATIONS:
        m = demo(tier)
        _EVALUATIONS[tier] = {"pitch": ev.pitch_scores(m), "levels": ev.level_scores(m),
                              "inpaint": ev.inpaint_scores(m, **ev.EIGHT_STEPS_CFG_1)}
    return _EVALUATIONS[tier]


@needs_int8
@pytest.mark.parametrize("tier", ["bfloat16", *CPU_AUTO_TIERS])
def test_gates_a_and_b_on_the_demo_model(tier: str) -> None:
    reference, m = demo("float32"), demo(tier)
    g = torch.Generator().manual_seed(0)
    channels, length = reference.components.latent_channels, 64
    x = torch.randn(2, channels, length, generator=g)
    cross = torch.randn(2, 16, reference.dit.to_cond_embed[0].in_features, generator=g)
    glob = torch.randn(2, reference.dit.to_global_embed[0].in_features, generator=g)
    local = torch.zeros(2, channels + 1, length)
    snrs = dit_gate(reference.dit, m.dit, x, cross, glob, local)
    assert min(snrs.values()) >= DIT_GATE_DB, snrs
    latents = reference.generate("triangle a3", duration=3.0, seed=2, steps=8, return_latents=True)
    assert decoder_gate(reference.autoencoder, m.autoencoder, latents) >= DECODER_GATE_DB


@needs_int8
@pytest.mark.parametrize("tier", CPU_AUTO_TIERS)
def test_gate_c_demo_evaluation_agrees_with_float32(tier: str) -> None:
    base, fast = evaluation("float32"), evaluation(tier)
    changed = [a["prompt"] for a, b in zip(base["pitch"]["rows"], fast["pitch"]["rows"], strict=True)
               if a["ok"] != b["ok"]]
    assert len(base["pitch"]["rows"]) == 24 and len(changed) <= 1, changed
    for group in ("levels", "inpaint"):
        for key, value in base[group].items():
            assert abs(fast[group][key] - value) <= 1.0, (group, key, value, fast[group][key])
