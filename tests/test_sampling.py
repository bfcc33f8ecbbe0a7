"""Sampling layer: schedules, samplers and RNG order replayed against the reference's DiT traces, and the
length / padding-mask / inpaint-mask / local-add-conditioning logic of generate()."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from golden import FIXTURES, assert_close, case_names, fixture_dir, load_case

from stable_audio_3 import masks
from stable_audio_3.request import GenerationRequest, inpaint_regions
from stable_audio_3.sampling import (
    SAMPLERS,
    FullShift,
    LogSNRShift,
    NoShift,
    build_schedule,
    default_sampler,
    initial_noise,
    noised_init,
    sample,
    seed_generator,
    shift_from_options,
)

TRACED = ("gen_t2a_default", "gen_inpaint_single")
GENERATE_KINDS = ("generate", "lora_generate")


def model_config(case) -> dict:
    return json.loads(case.config_path.read_text())


def layout(case) -> dict:
    """What generate() derives from a case's arguments before sampling: durations, lengths, masks."""
    cfg = model_config(case)
    kw = case.args["generate_kwargs"]
    ae = cfg["model"]["pretransform"]["config"]
    ratio, sr = ae["downsampling_ratio"], cfg["sample_rate"]
    batch = kw.get("batch_size", 1)
    duration = kw.get("duration", 120)
    durations = [float(d) for d in duration] if isinstance(duration, list) else [float(duration)] * batch
    padding = kw.get("duration_padding_sec", masks.DEFAULT_DURATION_PADDING_SEC)
    num_samples = masks.audio_sample_size(
        durations,
        sample_rate=sr,
        downsampling_ratio=ratio,
        latents_per_align=masks.latents_per_alignment(ae["encoder"]["config"]),
        padding_seconds=padding,
        sample_size=kw.get("sample_size", masks.DEFAULT_SAMPLE_SIZE),
    )
    T = num_samples // ratio
    valid = masks.valid_lengths(
        durations, sample_rate=sr, downsampling_ratio=ratio, latent_length=T, padding_seconds=padding
    )
    return dict(
        cfg=cfg,
        kw=kw,
        batch=batch,
        durations=durations,
        num_samples=num_samples,
        T=T,
        valid=valid,
        content=masks.content_latents(durations, sample_rate=sr, downsampling_ratio=ratio),
        sr=sr,
        ratio=ratio,
        channels=cfg["model"]["io_channels"],
    )


def schedule_for(case) -> torch.Tensor:
    lay = layout(case)
    shift = shift_from_options(lay["cfg"]["model"]["diffusion"].get("sampling_distribution_shift_options"))
    sigma_max = lay["kw"].get("init_noise_level", 1.0) if "init_audio" in case.inputs else 1.0
    return build_schedule(lay["kw"].get("steps", 8), lay["content"], sigma_max, shift)


def traced_cases() -> list[tuple[str, str]]:
    return [(f, c) for f in FIXTURES for c in TRACED if c in case_names(f)] or [("tiny-small", "<absent>")]


def generate_cases() -> list[tuple[str, str]]:
    pairs = [(f, c) for f in FIXTURES for k in GENERATE_KINDS for c in case_names(f, k)]
    return pairs or [("tiny-small", "<absent>")]


# -- (a) schedule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture,name", traced_cases())
def test_schedule_equals_traced_timesteps(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    schedule = schedule_for(case)
    steps = case.args["generate_kwargs"].get("steps", 8)
    assert schedule.shape == (1, steps + 1)
    for i in range(steps):
        golden = case.outputs[f"trace.step{i:02d}.t"]
        assert torch.equal(schedule[:, i], golden), f"step {i}: {schedule[:, i].item()} != {golden.item()}"
    assert schedule[0, -1].item() == 0.0


def test_default_schedule_values_and_noise_level_quirk() -> None:
    shift = shift_from_options(None)
    full = build_schedule(8, [97], 1.0, shift)[0]
    expected = [1.0, 0.994376, 0.984480, 0.957912, 0.890903, 0.745547, 0.512497, 0.273885, 0.0]
    assert torch.allclose(full, torch.tensor(expected), atol=1e-6)
    # init_noise_level < 1: the first value is reset to sigma_max after shifting, so step 2 is noisier.
    partial = build_schedule(8, [97], 0.9, shift)[0]
    expected = [0.9, 0.988541, 0.971667, 0.931662, 0.844224, 0.682980, 0.461327, 0.253979, 0.0]
    assert torch.allclose(partial, torch.tensor(expected), atol=1e-6)


def test_per_item_schedules() -> None:
    """Rate 0 (the default): identical rows for any lengths. A length-dependent shift: one row per item,
    each equal to the single-item schedule of that length."""
    rows = build_schedule(8, [16, 97, 113], 1.0, shift_from_options(None))
    assert rows.shape == (3, 9) and torch.equal(rows[0], rows[1]) and torch.equal(rows[1], rows[2])
    shift = LogSNRShift(rate=1.0)
    rows = build_schedule(8, [16, 97, 113], 1.0, shift)
    assert not torch.equal(rows[0], rows[2])
    # Equal up to float32 rounding: vectorised sigmoid/log2 may round the last bit differently for a
    # (3, 9) and a (1, 9) tensor on some CPUs.
    for i, n in enumerate([16, 97, 113]):
        torch.testing.assert_close(rows[i], build_schedule(8, [n], 1.0, shift)[0], rtol=0, atol=1e-6)
    # As many items as schedule points: still one row per item (the reference mixes them there).
    rows = build_schedule(2, [16, 97, 113], 1.0, shift)
    assert rows.shape == (3, 3)
    torch.testing.assert_close(rows[2], build_schedule(2, [113], 1.0, shift)[0], rtol=0, atol=1e-6)
    full = build_schedule(4, [300, 4000], 1.0, FullShift())
    assert full.shape == (2, 5) and (full[:, 1:-1] > torch.linspace(1, 0, 5)[1:-1]).all()


# -- (b) replaying the sampler on the recorded velocities ------------------------------------------


def replay(case, schedule: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Run the default sampler with the traced DiT outputs as the model; check every input it gets."""
    out = case.outputs
    errors: list[float] = []
    step = 0

    def recorded_model(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal step
        errors.append(assert_close(x_in, out[f"trace.step{step:02d}.x"], "generate_latents", f"x at step {step}"))
        assert torch.equal(t, out[f"trace.step{step:02d}.t"]), f"t at step {step}"
        step += 1
        return out[f"trace.step{step - 1:02d}.v"]

    seen: list[int] = []
    sampler = case.args["generate_kwargs"].get("sampler_type") or default_sampler(
        model_config(case)["model"]["diffusion"]["diffusion_objective"]
    )
    result = sample(recorded_model, x, schedule, sampler, callback=lambda info: seen.append(info["i"]))
    assert seen == list(range(schedule.shape[1] - 1)) == list(range(step))
    return result, errors


@pytest.mark.parametrize("fixture", FIXTURES)
def test_replay_t2a_reproduces_latents_and_rng_draws(fixture: str) -> None:
    case = load_case(fixture, "gen_t2a_default")
    out = case.outputs
    lay = layout(case)
    assert seed_generator(lay["kw"]["seed"]) == 42
    noise = initial_noise(lay["batch"], lay["channels"], lay["T"])
    assert torch.equal(noise, out["rng.000.randn"])
    latents, errors = replay(case, schedule_for(case), noise)
    err = assert_close(latents, out["latents_before_decode"], "generate_latents", f"{fixture} latents")
    print(f"{fixture}/gen_t2a_default: latents rel err {err:.3g}, worst traced x {max(errors):.3g}")
    assert_close(latents, load_case(fixture, "gen_t2a_default_latents").outputs["result"], "generate_latents")
    # The sampler took exactly the recorded draws: the next one is the decoder's dither (rng.009).
    assert torch.equal(torch.randn_like(latents), out["rng.009.randn_like"])
    # And the recorded draws are what the seed gives, in order and shape (case.json's rng_draws).
    torch.manual_seed(42)
    draws = case.meta["rng_draws"]
    assert [k for k, _ in draws[:9]] == ["randn"] + ["randn_like"] * 8
    for i, (_, shape) in enumerate(draws):
        key = f"rng.{i:03d}.{draws[i][0]}"
        assert list(out[key].shape) == shape
        assert torch.equal(torch.randn(shape), out[key]), key


@pytest.mark.parametrize("fixture", FIXTURES)
def test_replay_inpaint_reproduces_latents(fixture: str) -> None:
    case = load_case(fixture, "gen_inpaint_single")
    lay = layout(case)
    seed_generator(lay["kw"]["seed"])
    noise = initial_noise(lay["batch"], lay["channels"], lay["T"])
    assert torch.equal(noise, case.outputs["trace.step00.x"])
    latents, _ = replay(case, schedule_for(case), noise)
    err = assert_close(latents, case.outputs["latents_before_decode"], "generate_latents", fixture)
    print(f"{fixture}/gen_inpaint_single: latents rel err {err:.3g}")


# -- (c) the DiT's padding mask and local-add conditioning -----------------------------------------


@pytest.mark.parametrize("fixture,name", traced_cases())
def test_padding_mask_matches_trace(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    lay = layout(case)
    mask = masks.padding_mask(lay["valid"], lay["T"])
    assert mask.dtype == torch.bool
    assert torch.equal(mask.long(), case.outputs["trace.dit_kwargs.padding_mask"])


@pytest.mark.parametrize("fixture", FIXTURES)
def test_local_add_cond_text_to_audio_is_zero(fixture: str) -> None:
    case = load_case(fixture, "gen_t2a_default")
    lay = layout(case)
    inpaint = masks.build_inpaint_mask(
        num_samples=lay["num_samples"], latent_length=lay["T"], sample_rate=lay["sr"], durations=lay["durations"]
    )
    assert inpaint is None
    cond = masks.local_add_cond(None, None, batch_size=1, channels=lay["channels"], latent_length=lay["T"])
    assert torch.equal(cond, case.outputs["trace.dit_kwargs.local_add_cond"])


def inpaint_mask_for(case) -> torch.Tensor:
    lay = layout(case)
    kw = lay["kw"]
    return masks.build_inpaint_mask(
        num_samples=lay["num_samples"],
        latent_length=lay["T"],
        sample_rate=lay["sr"],
        durations=lay["durations"],
        start_seconds=kw["inpaint_mask_start_seconds"],
        end_seconds=kw["inpaint_mask_end_seconds"],
    )


@pytest.mark.parametrize("fixture", FIXTURES)
def test_local_add_cond_inpaint(fixture: str) -> None:
    """Mask channel from the seconds exactly; the latent channels are taken from the golden (they need
    the SAME encoder, checked in the next test): this pins the channel order and the zero structure."""
    case = load_case(fixture, "gen_inpaint_single")
    golden = case.outputs["trace.dit_kwargs.local_add_cond"]
    lay = layout(case)
    mask = inpaint_mask_for(case)
    assert torch.equal(mask, golden[:, 0])
    # Region 1.0-2.0 s and everything past 3 s regenerated: latents 11..21 and 33.. are 0.
    kept = [j for j in range(lay["T"]) if j * 4096 < 44100 or 88200 <= j * 4096 < 132300]
    assert mask[0].nonzero().flatten().tolist() == kept
    latents = golden[:, 1:]
    assert (latents[..., mask[0] == 0] == 0).all() and (latents[..., mask[0] == 1] != 0).all()
    ours = masks.local_add_cond(mask, latents, batch_size=1, channels=lay["channels"], latent_length=lay["T"])
    assert torch.equal(ours, golden)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_local_add_cond_inpaint_with_encoded_audio(fixture: str) -> None:
    """End to end with the repo's SAME encoder: the inpaint audio is zero-padded to the generated length
    and encoded unchunked (98 latents < 128)."""
    from stable_audio_3 import AutoencoderModel

    case = load_case(fixture, "gen_inpaint_single")
    lay = layout(case)
    audio = case.inputs["inpaint_audio"]
    audio = F.pad(audio, (0, lay["num_samples"] - audio.shape[-1]))
    latents = AutoencoderModel.from_pretrained(fixture_dir(fixture), device="cpu").encode(audio, lay["sr"])
    ours = masks.local_add_cond(
        inpaint_mask_for(case), latents, batch_size=1, channels=lay["channels"], latent_length=lay["T"]
    )
    err = assert_close(ours, case.outputs["trace.dit_kwargs.local_add_cond"], "autoencoder", fixture)
    print(f"{fixture}/gen_inpaint_single local_add_cond via SAME encode: rel err {err:.3g}")


def test_inpaint_masks_multi_region_and_continuation() -> None:
    common = dict(num_samples=98 * 4096, latent_length=98, sample_rate=44100, durations=[3.0])
    multi = masks.build_inpaint_mask(start_seconds=[0.25, 1.9], end_seconds=[1.1, 2.6], **common)[0]
    regenerate = [j for j in range(98) if 11025 <= j * 4096 < 48510 or 83790 <= j * 4096 < 114660 or j * 4096 >= 132300]
    assert (multi == 0).nonzero().flatten().tolist() == regenerate
    continuation = masks.build_inpaint_mask(start_seconds=1.5, end_seconds=3.0, **common)[0]
    assert continuation.tolist() == [1.0] * 17 + [0.0] * 81  # keep up to 1.5 s (17 frames start before 66150)
    # A caller's mask longer than the generated audio is cut, then cleared past the duration.
    prebuilt = torch.ones(1, 200 * 4096)
    prebuilt[:, : 5 * 4096] = 0
    latent = masks.build_inpaint_mask(mask=prebuilt, **common)[0]
    assert latent.tolist() == [0.0] * 5 + [1.0] * 28 + [0.0] * 65
    # Batch > 1: the batch-1 mask is shared by every item (the reference crashes here).
    cond = masks.local_add_cond(continuation[None], torch.ones(1, 4, 98), batch_size=3, channels=4, latent_length=98)
    assert cond.shape == (3, 5, 98) and torch.equal(cond[2, 0], continuation) and torch.equal(cond[1, 3], continuation)


# -- (d) lengths and padding masks of every generate case ------------------------------------------


@pytest.mark.parametrize("fixture,name", generate_cases())
def test_lengths_of_every_generate_case(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    lay = layout(case)
    shapes = {k: v["shape"] for k, v in case.meta["outputs"].items()}
    B, T = lay["batch"], lay["T"]
    if lay["kw"].get("return_latents"):
        assert shapes["result"] == [B, lay["channels"], T]
    else:
        assert shapes["latents_before_decode"] == [B, lay["channels"], T]
        same = len(set(lay["durations"])) == 1
        length = int(lay["durations"][0] * lay["sr"]) if same else T * lay["ratio"]
        assert shapes["result"] == [B, 2, length]
    table = json.loads((fixture_dir(fixture).parent / "tolerances.json").read_text())
    entry = table["flash_varlen_vs_reference_cpu_fallback"].get(f"{fixture}/{case.meta.get('variant_of', name)}")
    if entry is not None:
        assert entry["T"] == T
        assert entry["valid_latents_per_item"] == lay["valid"].tolist()
    assert ((T - lay["valid"]) >= 1).all()  # every case here has padded latents


@pytest.mark.parametrize(
    "duration,latent_t,valid,medium_t,medium_valid",
    [
        (1, 76, 75, 76, 75),
        (5, 120, 118, 120, 118),
        (10, 174, 172, 174, 172),
        (30, 388, 387, 388, 387),
        (60, 712, 710, 712, 710),
        (120, 1292, 1292, 1358, 1356),
        (250, 1292, 1292, 2758, 2756),
        (380, 1292, 1292, 4096, 4096),
    ],
)
def test_sample_size_clamp(duration: float, latent_t: int, valid: int, medium_t: int, medium_valid: int) -> None:
    """The spec's worked table: generate()'s default sample_size caps every model at 1292 latents."""
    for sample_size, want_t, want_valid in (
        (masks.DEFAULT_SAMPLE_SIZE, latent_t, valid),
        (16_777_216, medium_t, medium_valid),
    ):
        n = masks.audio_sample_size(
            [duration], sample_rate=44100, downsampling_ratio=4096, latents_per_align=2, sample_size=sample_size
        )
        assert n // 4096 == want_t
        lengths = masks.valid_lengths([duration], sample_rate=44100, downsampling_ratio=4096, latent_length=n // 4096)
        assert lengths.tolist() == [want_valid]


# -- samplers beyond the traced ones ---------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_recovers_data_under_an_exact_model(sampler: str) -> None:
    """With the exact velocity towards one data point, every sampler lands on it (straight flow paths).

    The ODE samplers stay on the line from x to the data, where v = noise - data; ping-pong re-noises
    with fresh noise, so its model must infer v from x and t."""
    torch.manual_seed(0)
    data, noise = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    x = noised_init(data, noise, 1.0)
    calls: list[torch.Tensor] = []

    def exact(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return (x_t - data) / t[:, None, None] if sampler == "pingpong" else noise - data

    schedule = build_schedule(6, [10, 40], 1.0, shift_from_options(None))
    out = sample(exact, x, schedule, sampler)
    assert (out - data).abs().max() < 1e-4
    assert len(calls) == (24 if sampler == "rk4" else 6)
    assert all(t.shape == (2,) for t in calls)


def test_sampler_accuracy_on_a_curved_flow() -> None:
    """Gaussian data N(0, s^2): the exact probability-flow velocity is x (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2)
    and the flow maps x(1) to s * x(1). Euler is first order; RK4 and DPM++ are far more accurate."""
    s = 0.5

    def gaussian_flow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.double()[:, None, None]
        return x * (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2)

    x = torch.ones(1, 1, 1, dtype=torch.float64)
    err = {}
    for steps in (10, 20):
        schedule = build_schedule(steps, [10], 1.0, NoShift()).double()
        for name in ("euler", "rk4", "dpmpp"):
            err[name, steps] = abs(sample(gaussian_flow, x, schedule, name).item() - s)
    assert 0.45 < err["euler", 20] / err["euler", 10] < 0.55
    assert err["rk4", 10] < 1e-6 and err["dpmpp", 10] < 0.01 < err["euler", 10]


def test_rng_consumption_per_sampler() -> None:
    x, schedule = torch.zeros(1, 2, 8), build_schedule(5, [8], 1.0, shift_from_options(None))
    model = lambda x_t, t: torch.ones_like(x_t)  # noqa: E731
    for sampler, draws in (("pingpong", 5), ("euler", 0), ("rk4", 0), ("dpmpp", 0)):
        torch.manual_seed(3)
        sample(model, x, schedule, sampler)
        after = torch.randn(4)
        torch.manual_seed(3)
        for _ in range(draws):
            torch.randn(1, 2, 8)
        assert torch.equal(after, torch.randn(4)), sampler


def test_audio_to_audio_start_point() -> None:
    init, noise = torch.full((1, 2, 4), 2.0), torch.full((1, 2, 4), -1.0)
    assert torch.allclose(noised_init(init, noise, 0.5), torch.full((1, 2, 4), 0.5))
    assert torch.equal(noised_init(init, noise, 1.0), noise)


# -- (e) bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", [0, -3.0, float("nan"), [1.0, 0.0]])
def test_bad_duration(duration) -> None:
    batch = len(duration) if isinstance(duration, list) else 1
    bad = duration[1] if isinstance(duration, list) else duration
    with pytest.raises(ValueError, match=rf"^duration={bad!r} is invalid; a positive finite number of seconds"):
        GenerationRequest(prompt="x", duration=duration, batch_size=batch).verify()
    with pytest.raises(ValueError, match="duration has 2 values but batch_size=3"):
        GenerationRequest(prompt="x", duration=[1.0, 2.0], batch_size=3).verify()


def test_bad_inpaint_regions() -> None:
    with pytest.raises(ValueError, match=r"inpaint_mask_end_seconds=1\.0 is not after inpaint_mask_start_seconds=2\.0"):
        inpaint_regions(2.0, 1.0)
    with pytest.raises(ValueError, match=r"inpaint_mask_end_seconds=0\.5 is not after .*=1\.0; each region"):
        inpaint_regions([0.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="must both be numbers or both be lists, got list and float"):
        inpaint_regions([1.0], 2.0)
    with pytest.raises(ValueError, match="has 2 values but inpaint_mask_end_seconds has 1"):
        inpaint_regions([1.0, 2.0], [3.0])
    with pytest.raises(ValueError, match="inpaint_mask_start_seconds was given without inpaint_mask_end_seconds"):
        inpaint_regions(1.0, None)
    with pytest.raises(ValueError, match=r"inpaint_mask_start_seconds=-1\.0 is invalid"):
        inpaint_regions(-1.0, 1.0)
    assert inpaint_regions(None, None) is None


def test_bad_sampler_and_other_arguments() -> None:
    x, schedule = torch.zeros(1, 2, 4), build_schedule(2, [4])
    with pytest.raises(
        ValueError, match=r"^sampler_type='heun' is unknown; allowed: 'pingpong', 'euler', 'rk4', 'dpmpp'$"
    ):
        sample(lambda x_t, t: x_t, x, schedule, "heun")
    with pytest.raises(ValueError, match=r"diffusion_objective='v' is not supported; allowed: 'rf_denoiser', 'rectif"):
        default_sampler("v")
    with pytest.raises(ValueError, match=r"^init_noise_level=1\.5 is invalid; a number in \[0, 1\]"):
        noised_init(x, x, 1.5)
    with pytest.raises(ValueError, match=r"^steps=0 is invalid; a positive integer is required$"):
        build_schedule(0, [4])
    with pytest.raises(ValueError, match=r"distribution shift type 'cosine' is unknown; allowed: 'logsnr', 'full'"):
        shift_from_options({"type": "cosine"})
    with pytest.raises(ValueError, match=r"seed=-5 is invalid; an integer in \[-1, 2\*\*63 - 1\] is required"):
        seed_generator(-5)
    with pytest.raises(ValueError, match=r"duration_padding_sec=-1\.0 is invalid"):
        masks.valid_lengths([1.0], sample_rate=44100, downsampling_ratio=4096, latent_length=10, padding_seconds=-1.0)
    with pytest.raises(ValueError, match=r"sample_size=100 is invalid"):
        masks.audio_sample_size([1.0], sample_rate=44100, downsampling_ratio=4096, latents_per_align=2, sample_size=100)
    with pytest.raises(ValueError, match=r"schedule of shape \(3, 3\) does not fit a batch of 1"):
        sample(lambda x_t, t: x_t, x, torch.zeros(3, 3), "euler")
    assert 0 <= seed_generator(-1) < 99999
