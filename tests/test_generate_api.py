"""generate() beyond the fixtures: seeds, callbacks, input forms, validation, full-size layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from golden import GOLDEN, fixture_dir, load_case, rel_err

from stable_audio_3 import GenerationCancelled, StableAudioModel
from stable_audio_3.api import build_autoencoder
from stable_audio_3.loading import DIFFUSION_MODELS, packaged_config

_MODEL: dict[str, StableAudioModel] = {}


def model() -> StableAudioModel:
    if "m" not in _MODEL:
        _MODEL["m"] = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu")
    return _MODEL["m"]


def sig_a() -> torch.Tensor:
    return load_case("tiny-small", "gen_a2a_noise0.5").inputs["init_audio"]


def test_same_seed_same_audio_and_random_seed_is_reported() -> None:
    m = model()
    a = m.generate("lofi house loop", duration=1.0, seed=5)
    assert m.last_seeds == [5]
    b = m.generate("lofi house loop", duration=1.0, seed=5)
    assert torch.equal(a, b)
    c = m.generate("lofi house loop", duration=1.0, seed=-1)
    (used,) = m.last_seeds
    assert 0 <= used < 99999
    assert torch.equal(c, m.generate("lofi house loop", duration=1.0, seed=used))


def test_per_item_seeds_reproduce_batch_one_results() -> None:
    m = model()
    prompts = ["lofi house loop", "rain on a tin roof"]
    batch = m.generate(prompts, duration=1.5, seed=[3, 11], batch_size=2)
    assert m.last_seeds == [3, 11]
    for i, (p, s) in enumerate(zip(prompts, [3, 11], strict=True)):
        single = m.generate(p, duration=1.5, seed=s)
        assert rel_err(batch[i : i + 1], single) < 1e-3
    # One shared seed gives different noise per item, so item 1 differs from a batch-1 run.
    shared = m.generate(prompts, duration=1.5, seed=3, batch_size=2)
    assert m.last_seeds == [3, 3]
    assert rel_err(shared[1:], m.generate(prompts[1], duration=1.5, seed=3)) > 1e-2


def test_callback_sees_every_step_and_can_cancel() -> None:
    m = model()
    seen = []
    m.generate("x", duration=1.0, steps=4, seed=1, callback=lambda i, n, x: seen.append((i, n, x.shape)))
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(GenerationCancelled, match="cancelled by the callback at step 2/4"):
        m.generate("x", duration=1.0, steps=4, seed=1, callback=lambda i, n, x: i < 2)


def test_audio_input_forms_agree() -> None:
    m = model()
    audio = sig_a()
    ref = m.generate("x", duration=2.0, seed=2, init_audio=(44100, audio), init_noise_level=0.5, return_latents=True)
    swapped = m.generate("x", duration=2.0, seed=2, init_audio=(audio, 44100), init_noise_level=0.5,
                         return_latents=True)
    as_numpy = m.generate("x", duration=2.0, seed=2, init_audio=(44100, audio.T.numpy()), init_noise_level=0.5,
                          return_latents=True)
    assert torch.equal(ref, swapped)
    assert torch.equal(ref, as_numpy)


def test_unclamped_output_and_noise_on_cpu() -> None:
    m = model()
    a = m.generate("x", duration=1.0, seed=4, clamp=False)
    b = m.generate("x", duration=1.0, seed=4)
    assert torch.equal(a.clamp(-1, 1), b)
    assert torch.equal(m.generate("x", duration=1.0, seed=4, noise_device="cpu"), b)


def test_inpainting_with_batch_size_above_one() -> None:
    """The reference crashes here; we repeat the mask and the inpaint latents over the batch."""
    m = model()
    audio = sig_a()
    out = m.generate(["a", "b", "c"], duration=3.0, seed=[1, 2, 3], batch_size=3, inpaint_audio=(44100, audio),
                     inpaint_mask_start_seconds=[0.5, 2.0], inpaint_mask_end_seconds=[1.0, 2.5])
    assert out.shape == (3, 2, 3 * 44100)
    single = m.generate("b", duration=3.0, seed=2, inpaint_audio=(44100, audio),
                        inpaint_mask_start_seconds=[0.5, 2.0], inpaint_mask_end_seconds=[1.0, 2.5])
    assert rel_err(out[1:2], single) < 1e-3


def test_continuation_keeps_the_given_audio_and_continues_it() -> None:
    m = model()
    prefix = sig_a()[:, : 44100]
    a = m.generate("x", duration=3.0, seed=9, inpaint_audio=(44100, prefix), continuation=True, return_latents=True)
    b = m.generate("x", duration=3.0, seed=9, inpaint_audio=(44100, prefix), inpaint_mask_start_seconds=1.0,
                   inpaint_mask_end_seconds=3.0, return_latents=True)
    assert torch.equal(a, b)


def test_paste_back_keeps_the_given_audio_exactly_and_crossfades_into_the_regions() -> None:
    m = model()
    audio = sig_a()[:, : 3 * 44100]
    regions = dict(inpaint_mask_start_seconds=[0.5, 2.0], inpaint_mask_end_seconds=[1.0, 2.5])
    plain = m.generate("x", duration=3.0, seed=4, inpaint_audio=(44100, audio), clamp=False, **regions)
    pasted = m.generate(
        "x", duration=3.0, seed=4, inpaint_audio=(44100, audio), inpaint_paste_back=True, clamp=False, **regions
    )
    given = audio.expand(2, -1) if audio.shape[0] == 1 else audio
    kept = torch.ones(3 * 44100, dtype=torch.bool)
    kept[22050:44100] = False
    kept[88200:110250] = False
    assert torch.equal(pasted[0][:, kept], given[:, kept])  # exactly the given audio where kept
    fade = int(0.02 * 44100)
    inner = torch.zeros_like(kept)
    inner[22050 + fade + 1 : 44100 - fade - 1] = True
    assert torch.equal(pasted[0][:, inner], plain[0][:, inner])  # the generated audio inside each region
    edge = 22050 + fade // 2  # half-way through the crossfade: the mean of the two
    torch.testing.assert_close(pasted[0][:, edge], (given[:, edge] + plain[0][:, edge]) / 2, atol=2e-3, rtol=0)


def test_paste_back_needs_the_audio_and_the_regions() -> None:
    with pytest.raises(ValueError, match="inpaint_paste_back=True needs inpaint_audio and the regions"):
        model().generate("x", duration=1.0, inpaint_paste_back=True)
    with pytest.raises(ValueError, match="inpaint_paste_back=1 is invalid; True or False is required"):
        model().generate("x", duration=1.0, inpaint_paste_back=1, inpaint_audio=(44100, sig_a()),
                         inpaint_mask_start_seconds=0.2, inpaint_mask_end_seconds=0.5)


def test_default_duration_comes_from_the_config() -> None:
    m = model()
    assert m.default_duration == 120.0  # the reference's default, within this model's 120 s
    m.components.config["default_duration"] = 1.5
    try:
        assert m.default_duration == 1.5
        out = m.generate("x", seed=1, steps=2)
        assert out.shape[-1] == int(1.5 * 44100)
    finally:
        del m.components.config["default_duration"]


def test_generate_uses_the_model_defaults_unless_told_otherwise(monkeypatch) -> None:
    """Post-trained: 8 steps, cfg 1, ping-pong (the reference); -base: 50, 7, Euler; a config's own wins."""
    from stable_audio_3 import pipeline

    seen = []
    real = pipeline.make_plan
    monkeypatch.setattr(pipeline, "make_plan", lambda c, r: seen.append(r) or real(c, r))
    m = model()
    assert (m.is_base, m.recommended_steps, m.recommended_cfg_scale) == (False, 8, 1.0)
    m.generate("x", duration=0.5, seed=1, return_latents=True)
    assert (seen[-1].steps, seen[-1].cfg_scale, seen[-1].sampler_type) == (8, 1.0, "pingpong")
    m.components.config.update(default_steps=3, default_cfg_scale=2.5)
    try:
        assert (m.recommended_steps, m.recommended_cfg_scale) == (3, 2.5)
        m.generate("x", duration=0.5, seed=1, return_latents=True)
        assert (seen[-1].steps, seen[-1].cfg_scale) == (3, 2.5)
        m.generate("x", duration=0.5, seed=1, steps=2, cfg_scale=0.0, sampler_type="euler", return_latents=True)
        assert (seen[-1].steps, seen[-1].cfg_scale, seen[-1].sampler_type) == (2, 0.0, "euler")  # given values win
    finally:
        del m.components.config["default_steps"], m.components.config["default_cfg_scale"]


def test_base_model_generate_defaults_to_50_steps_and_cfg_7(monkeypatch) -> None:
    from stable_audio_3 import pipeline

    case = load_case("tiny-small", "gen_base_style_cfg7_neg_euler")
    base = StableAudioModel.from_pretrained(case.dir, device="cpu", config=case.config_path)
    seen = []
    monkeypatch.setattr(pipeline, "sample_plan", lambda c, plan, enc, cb=None: seen.append(plan) or plan.noise)
    base.generate("x", duration=0.5, seed=1, return_latents=True)
    r = seen[-1].request
    assert (r.steps, r.cfg_scale, r.sampler_type) == (50, 7.0, "euler")
    assert seen[-1].steps == 50 and all(seen[-1].guided[i] == (True,) for i in range(50))


def test_each_model_has_its_own_maximum() -> None:
    m = model()
    assert m.max_duration == pytest.approx(5292032 / 44100)
    with pytest.raises(ValueError, match=r"duration=121 is too long; this model allows at most 120.00 seconds"):
        m.generate("x", duration=121)


BAD = [
    (dict(duration=0), "duration=0 is invalid; a positive finite number of seconds"),
    (dict(duration=-2.0), "duration=-2.0 is invalid"),
    (dict(duration=[1.0, 2.0], batch_size=1), "duration has 2 values but batch_size=1"),
    (dict(duration=[1.0, 2.0], prompt=["a", "b", "c"]), "prompt has 3 values but duration has 2"),
    (dict(steps=0), "steps=0 is invalid; an integer in [1, 1000] is required"),
    (dict(steps=10**7), "steps=10000000 is invalid; an integer in [1, 1000] is required"),
    (dict(cfg_scale=float("inf")), "cfg_scale=inf is invalid; a number in [0, 100] is required"),
    (dict(cfg_scale=float("nan")), "cfg_scale=nan is invalid"),
    (dict(prompt=["a", "b"], batch_size=1), "prompt has 2 values but batch_size=1"),
    (dict(seed=[1, 2], batch_size=3), "seed has 2 values but batch_size=3"),
    (dict(seed=2**63), "seed=9223372036854775808 is invalid; an integer in [-1, 2**63 - 1] is required"),
    (dict(batch_size=20000), "batch_size=20000 is invalid; an integer in [1, 64] is required"),
    (dict(inpaint_audio=(44100, torch.zeros(2, 100))), "inpaint_audio needs the regions to regenerate"),
    (dict(inpaint_audio=(44100, torch.zeros(2, 100)), inpaint_mask_start_seconds=1.5, inpaint_mask_end_seconds=2),
     "inpaint region starting at 1.5 s lies entirely after the output (1 s)"),
    (dict(seed="x"), "seed='x' is invalid"),
    (dict(init_noise_level=1.5, init_audio=(44100, torch.zeros(2, 100))), "init_noise_level=1.5 is invalid"),
    (dict(inpaint_mask_start_seconds=2.0, inpaint_mask_end_seconds=1.0),
     "inpaint_mask_end_seconds=1.0 is not after inpaint_mask_start_seconds=2.0"),
    (dict(inpaint_mask_start_seconds=[0.5, 1.0], inpaint_mask_end_seconds=[1.5, 2.0]),
     "inpaint regions 0.5-1.5 s and 1-2 s overlap"),
    (dict(inpaint_mask_start_seconds=-1.0, inpaint_mask_end_seconds=1.0),
     "inpaint_mask_start_seconds=-1.0 is invalid"),
    (dict(init_audio=(44100, torch.zeros(2, 2, 2, 10))), "init_audio: expected a tensor of shape"),
    (dict(init_audio=(44100, torch.zeros(2, 0))), "init_audio: audio has zero samples"),
    (dict(init_audio=(44100, torch.full((2, 10), float("nan")))), "init_audio: audio contains NaN"),
    (dict(init_audio=torch.zeros(2, 10)), "init_audio: a bare array has no sample rate"),
    (dict(inpaint_audio=(0, torch.zeros(2, 10)), continuation=True), "inpaint_audio sample rate=0 is invalid"),
    (dict(sampler_type="heun"), "sampler_type='heun' is invalid; allowed: 'pingpong'"),
    (dict(lora_configs=[{"lora_index": 0, "interval": [0.5, 1.0]}]), "lora_configs was given but no LoRA is loaded"),
    (dict(sample_size=10**9), "sample_size=1000000000 is invalid; at most this model's 5292032 samples"),
    (dict(chunked_decode="yes"), "chunked_decode='yes' is invalid; allowed: None"),
    (dict(continuation=True), "continuation=True needs inpaint_audio"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_arguments_fail_before_any_work(kwargs: dict, message: str, monkeypatch) -> None:
    m = model()
    calls = []
    monkeypatch.setattr(m.components.conditioner, "encode", lambda *a, **k: calls.append(1))
    kwargs = {"prompt": "x", "duration": 1.0, **kwargs}
    with pytest.raises(ValueError) as err:
        m.generate(**kwargs)
    assert message in str(err.value)
    assert calls == []  # nothing heavy ran


@pytest.mark.parametrize("name", DIFFUSION_MODELS)
def test_full_size_model_matches_manifest(name: str) -> None:
    """DiT + conditioner + autoencoder built from the packaged config have the manifest's keys and shapes."""
    from stable_audio_3.models.conditioning import Conditioner
    from stable_audio_3.models.dit import DiffusionTransformer

    path = GOLDEN / "manifests" / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"manifest {path} not found (set SA3_GOLDEN)")
    manifest = json.loads(path.read_text())
    cfg = packaged_config(name)
    assert cfg == manifest["config_used"]
    with torch.device("meta"):
        dit = DiffusionTransformer.from_config(cfg["model"]["diffusion"]["config"])
        cond = Conditioner.from_config(cfg["model"]["conditioning"], cfg["model"]["diffusion"])
    ae = build_autoencoder(cfg, None, name)
    ours = {f"model.model.{k}": tuple(v.shape) for k, v in dit.state_dict().items()}
    ours |= {f"conditioner.{k}": tuple(v.shape) for k, v in cond.state_dict().items()}
    ours |= {f"pretransform.model.{k}": tuple(v.shape) for k, v in ae.state_dict().items()}
    assert ours == {t["key"]: tuple(t["shape"]) for t in manifest["tensors"]}


def test_numpy_int16_init_audio_is_scaled() -> None:
    m = model()
    pcm = (np.sin(np.arange(44100) / 7) * 20000).astype(np.int16)
    a = m.generate("x", duration=1.0, seed=1, init_audio=(44100, pcm), init_noise_level=0.3, return_latents=True)
    b = m.generate("x", duration=1.0, seed=1, init_audio=(44100, torch.from_numpy(pcm / 32767).float()),
                   init_noise_level=0.3, return_latents=True)
    assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("inpaint", [False, True])
def test_decoded_audio_streams_stretch_by_stretch(inpaint: bool) -> None:
    """`on_audio` gets the chunked decoder's stretches in order, each final: together exactly the
    returned audio (paste-back, valid-length zeroing and the cut included), and more than one."""
    from stable_audio_3.pipeline import generate
    from stable_audio_3.request import GenerationRequest

    m = model()
    sr = m.sample_rate
    options = dict(prompt=["lofi house loop", "rain"], duration=[100.0, 96.0], seed=[1, 2], steps=2,
                   chunked_decode=True, duration_padding_sec=0)
    if inpaint:
        given = torch.sin(torch.arange(int(100 * sr)) / 20.0).repeat(2, 1) * 0.5
        options.update(inpaint_audio=(sr, given), inpaint_mask_start_seconds=[5.0, 90.0],
                       inpaint_mask_end_seconds=[10.0, 95.0], inpaint_paste_back=True)
    request = GenerationRequest(**options).resolve(m.defaults)
    stretches: list[tuple[torch.Tensor, int]] = []
    with torch.inference_mode():
        whole, _ = generate(m.components, request, on_audio=lambda a, start: stretches.append((a.clone(), start)))
    assert len(stretches) >= 2
    starts = [s for _, s in stretches]
    assert starts[0] == 0 and starts == sorted(starts)
    assert all(a.shape[-1] == b - s for (a, s), b in zip(stretches, starts[1:] + [whole.shape[-1]], strict=True))
    assert torch.equal(torch.cat([a for a, _ in stretches], dim=-1), whole)
    assert whole.shape[-1] == int(100 * sr)
