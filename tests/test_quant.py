"""The int8 layers of the int8 precision tiers and the exact step-invariant shortcuts of the DiT."""

from __future__ import annotations

import pytest
import torch
from golden import rel_err

from stable_audio_3.models.dit import DiffusionTransformer
from stable_audio_3.models.quant import Int8Linear, hadamard, quantize_linears


def snr_db(ref: torch.Tensor, other: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - other).pow(2).sum()))


def test_int8_linear_is_close_to_the_float_layer_and_keeps_shape_and_dtype() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 384)
    x = torch.randn(2, 50, 256)
    q = Int8Linear(linear)
    y = q(x)
    assert y.shape == (2, 50, 384) and y.dtype == torch.float32
    assert 33 < snr_db(linear(x).detach(), y) < 60  # quantized, but close
    assert q(x.bfloat16()).dtype == torch.bfloat16
    assert snr_db(linear(x[:1, :3]).detach(), q(x[:1, :3])) > 33  # fewer rows than the kernel takes
    loud = x.clone()
    loud[0, 0] *= 1000  # per-token scales: one loud token leaves the others' resolution alone
    assert snr_db(linear(loud[1]).detach(), q(loud)[1]) > 33


def test_hadamard_is_orthonormal_and_refuses_other_sizes() -> None:
    h = hadamard(16)
    assert torch.allclose(h @ h.T, torch.eye(16), atol=1e-6) and set(h.abs().unique().tolist()) == {0.25}
    with pytest.raises(ValueError, match=r"^size=12 is invalid; a power of two$"):
        hadamard(12)


def test_rotated_int8_linear_keeps_heavy_tailed_inputs_that_plain_int8_loses() -> None:
    """A GLU-like input (a product of two Gaussians, a few loud features): turning each block of
    16 features by a Hadamard matrix before the per-token scale is taken gains resolution; the
    layer still computes the same product."""
    torch.manual_seed(1)
    linear = torch.nn.Linear(1024, 256)
    x = torch.randn(300, 1024) * torch.nn.functional.silu(torch.randn(300, 1024))
    x[:, :4] *= 20
    exact = linear(x).detach()
    plain, rotated = snr_db(exact, Int8Linear(linear)(x)), snr_db(exact, Int8Linear(linear, rotate=16)(x))
    assert rotated > plain + 6 and rotated > 33, (plain, rotated)


def test_quantize_linears_replaces_every_linear_but_the_kept_ones() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Sequential(torch.nn.Linear(8, 4)))
    assert quantize_linears(net, keep=("2.0",)) == 1
    assert isinstance(net[0], Int8Linear) and type(net[2][0]) is torch.nn.Linear
    assert isinstance(net[1], torch.nn.GELU)
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(24, 8))
    assert quantize_linears(net, rotate=16) == 2
    assert (net[0].rotate, net[1].rotate) == (16, 0)  # 16 does not divide 24


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
