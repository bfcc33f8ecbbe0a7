"""The CPU int8 fast path (`quantize="int8"`) and the exact step-invariant shortcuts of the DiT."""

from __future__ import annotations

import pytest
import torch
from golden import fixture_dir, rel_err

from stable_audio_3 import StableAudioModel
from stable_audio_3.models.dit import DiffusionTransformer
from stable_audio_3.models.quant import Int8Linear, check_quantize, quantize_linears


def snr_db(ref: torch.Tensor, other: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - other).pow(2).sum()))


def test_int8_linear_is_close_to_the_float_layer_and_keeps_shape_and_dtype() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 384)
    x = torch.randn(2, 50, 256)
    q = Int8Linear(linear)
    y = q(x)
    assert y.shape == (2, 50, 384) and y.dtype == torch.float32
    assert 28 < snr_db(linear(x).detach(), y) < 60  # quantized, but close
    assert q(x.bfloat16()).dtype == torch.bfloat16


def test_quantize_linears_replaces_every_linear_and_nothing_else() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Sequential(torch.nn.Linear(8, 4)))
    assert quantize_linears(net) == 2
    assert isinstance(net[0], Int8Linear) and isinstance(net[2][0], Int8Linear)
    assert isinstance(net[1], torch.nn.GELU)


def test_check_quantize_names_value_and_allowed() -> None:
    assert check_quantize(None, torch.device("cuda")) is None
    assert check_quantize("int8", torch.device("cpu")) == "int8"
    with pytest.raises(ValueError, match=r"^quantize='int4' is not supported; allowed: None, 'int8'$"):
        check_quantize("int4", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^quantize='int8' runs on the CPU only; device='cuda' was given$"):
        check_quantize("int8", torch.device("cuda"))


def test_quantized_model_generates_close_to_float_and_refuses_loras() -> None:
    path = fixture_dir("tiny-small")
    ref = StableAudioModel.from_pretrained(path, device="cpu")
    fast = StableAudioModel.from_pretrained(path, device="cpu", quantize="int8")
    assert fast.quantize == "int8" and ref.quantize is None
    n_int8 = sum(isinstance(m, Int8Linear) for m in fast.dit.modules())
    assert n_int8 == 9 * len(fast.dit.transformer.layers)  # qkv, out; q, kv, out; 2 feed-forward; 2 local-add
    assert any(isinstance(m, Int8Linear) for m in fast.autoencoder.decoder.modules())
    text = fast.conditioner.prompt_conditioners()["prompt"].text_encoder.model
    assert next(text.parameters()).dtype == torch.float32  # a bf16 file runs in float32 on this path
    a = ref.generate("lofi house loop", duration=2.0, seed=4, return_latents=True)
    b = fast.generate("lofi house loop", duration=2.0, seed=4, return_latents=True)
    assert a.shape == b.shape
    assert snr_db(a, b) > 22  # 28-30 dB on this random-weight model
    audio = fast.generate("lofi house loop", duration=2.0, seed=4)
    assert audio.shape == (1, 2, int(2.0 * fast.sample_rate)) and torch.isfinite(audio).all()
    with pytest.raises(ValueError, match=r"^load_lora: this model was loaded with quantize='int8'"):
        fast.load_lora("any.safetensors")


def tiny_dit() -> DiffusionTransformer:
    torch.manual_seed(0)
    dit = DiffusionTransformer(io_channels=8, embed_dim=64, depth=2, num_heads=1, cond_token_dim=16,
                               global_cond_dim=16, local_add_cond_dim=9, num_memory_tokens=3)
    for p in dit.parameters():  # zero-initialised gains and gates would hide mistakes
        torch.nn.init.normal_(p, std=0.2)
    return dit.eval()


@torch.no_grad()
def test_padded_tokens_are_skipped_exactly() -> None:
    """'exclude' padding: valid outputs equal those of the full-length masked computation, with
    padded contents of any value and for items of different lengths."""
    dit = tiny_dit()
    x, t = torch.randn(2, 8, 20), torch.tensor([0.7, 0.7])
    cross, glob, local = torch.randn(2, 5, 16), torch.randn(2, 16), torch.randn(2, 9, 20)
    mask = torch.arange(20)[None] < torch.tensor([[12], [15]])
    v = dit.velocity(x, t, cross, glob, local, mask)
    noisy = torch.where(mask[:, None], x, torch.randn_like(x) * 10)
    v2 = dit.velocity(noisy, t, cross, glob, local, mask)
    for i, n in enumerate((12, 15)):
        assert rel_err(v[i, :, :n], v2[i, :, :n]) < 1e-5
    # Batch of one at its valid length: the same as the item computed in the batch of two.
    alone = dit.velocity(x[:1], t[:1], cross[:1], glob[:1], local[:1], mask[:1])
    assert rel_err(alone[0, :, :12], v[0, :, :12]) < 1e-5
    # The oracle: the explicit softmax backend on the whole padded sequence.
    dit.set_attention_backend("math")
    oracle = dit.velocity(x, t, cross, glob, local, mask)
    assert rel_err(oracle[0, :, :12], v[0, :, :12]) < 1e-5 and rel_err(oracle[1, :, :15], v[1, :, :15]) < 1e-5


@torch.no_grad()
def test_prepared_conditioning_gives_the_same_velocity_at_every_step() -> None:
    """Sampling prepares the step-invariant projections once; each step must equal a full pass."""
    dit = tiny_dit()
    x, cross, glob, local = torch.randn(1, 8, 10), torch.randn(1, 5, 16), torch.randn(1, 16), torch.randn(1, 9, 10)
    prepared = dit.prepare(cross, glob, local)
    padding = dit.padding([10], 10, "exclude", "cpu")
    assert len(prepared.context_kv) == len(prepared.local) == len(dit.transformer.layers)
    for t in (0.9, 0.5):
        tt = torch.tensor([t])
        assert torch.equal(dit.velocity(x, tt, cross, glob, local), dit.step_velocity(x, tt, prepared, padding))
