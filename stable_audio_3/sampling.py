"""Rectified-flow sampling: seeding, timestep schedules (with distribution shifts) and samplers.

Convention: t = 1 is pure noise, t = 0 is data, x_t = (1 - t) x_0 + t noise, and the model predicts the
velocity v = noise - x_0, so `x - t v` is its estimate of the clean latents.

Every sampler is a short function `sampler(denoise, x, schedule, callback=None)`, where
`denoise(x, t) -> v` is the guided DiT call (conditioning bound by the caller) and `t` has shape (B,).
Schedules are per batch item, shape (B, steps + 1): items of different valid lengths may get different
schedules when the shift depends on the length.

Randomness comes only from torch's global generator, in the reference's order, so a seeded run
reproduces the official draws: `initial_noise` (one `randn`), then ping-pong's one `randn_like(x)` per
step (the last one too, where it is multiplied by 0). Euler, RK4 and DPM++ draw nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`denoise(x (B, C, T), t (B,)) -> v (B, C, T)`: the model's (guided) velocity."""

StepCallback = Callable[[dict], None]
"""Called once per step with {"i", "steps", "t", "x", "denoised"} (x before the update)."""

SAMPLERS = ("pingpong", "euler", "rk4", "dpmpp")
DEFAULT_SAMPLER = {"rf_denoiser": "pingpong", "rectified_flow": "euler"}


# -- seeding and noise ---------------------------------------------------------------------------


def seed_generator(seed: int = -1) -> int:
    """Seed torch's global generators (CPU and every CUDA device) as generate() does; returns the seed.

    -1 picks a random seed in [0, 99999), like the reference.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r} is invalid; an integer is required (-1 for a random seed)")
    seed = int(seed)
    if seed == -1:
        seed = int(np.random.randint(0, 99999))
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed={seed} is invalid; allowed: -1 (random) or an integer in [0, 2**64)")
    torch.manual_seed(seed)
    return seed


def initial_noise(
    batch_size: int, channels: int, length: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The starting noise (B, C, T): drawn in float32 (first draw after seeding), then cast to the model dtype."""
    return torch.randn([batch_size, channels, length], device=device).to(dtype)


def noised_init(init_latents: torch.Tensor, noise: torch.Tensor, init_noise_level: float) -> torch.Tensor:
    """Audio-to-audio start point: the init latents taken to noise level `init_noise_level` (= sigma_max).

    The schedule then starts at the same sigma_max (see `build_schedule`).
    """
    _check_noise_level(init_noise_level, "init_noise_level")
    return init_latents * (1 - init_noise_level) + noise * init_noise_level


def _check_noise_level(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} is invalid; a number in [0, 1] is required (1 = start from pure noise)")


# -- distribution shifts -------------------------------------------------------------------------


class DistributionShift(Protocol):
    """Warps a linear schedule t in [0, 1]; `seq_len` is (B,) so the result can be per item, (B, N)."""

    def shift(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor: ...


def _per_item(t: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast a (N,) schedule against a (B,) per-item quantity: (1, N) and (B, 1)."""
    return t.reshape(1, -1), value.reshape(-1, 1).to(t.device)


class LogSNRShift:
    """Steps spaced uniformly in log-SNR between logsnr_start (t = 1 side) and logsnr_end (t = 0 side).

    logsnr_start falls by `rate` per doubling of the sequence length over `anchor_length`; with rate 0
    (the inference default) the schedule does not depend on the length. t = 0 and t = 1 stay exact.
    """

    def __init__(
        self, anchor_length: float = 2000, anchor_logsnr: float = -6.2, rate: float = 1.0, logsnr_end: float = 2.0
    ):
        self.anchor_length = anchor_length
        self.anchor_logsnr = anchor_logsnr
        self.rate = rate
        self.logsnr_end = logsnr_end

    def shift(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        start = self.anchor_logsnr - self.rate * torch.log2(seq_len.float() / self.anchor_length)
        t_grid, start = _per_item(t, start)
        logsnr = self.logsnr_end - t_grid * (self.logsnr_end - start)
        out = torch.sigmoid(-logsnr)
        out = torch.where(t_grid <= 0, torch.zeros_like(out), out)
        return torch.where(t_grid >= 1, torch.ones_like(out), out)


class FullShift:
    """SD3-style length-dependent shift ("full", the training-time t shift):
    t' = 1 - e^mu / (e^mu + t / (1 - t)), mu = -(base + (max - base) (L - min_len) / (max_len - min_len))."""

    def __init__(
        self,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        max_length: int = 4096,
        min_length: int = 256,
        use_sine: bool = False,
    ):
        self.base_shift = base_shift
        self.max_shift = max_shift
        self.max_length = max_length
        self.min_length = min_length
        self.use_sine = use_sine

    def shift(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        length = seq_len.float().clamp(self.min_length, self.max_length)
        t_grid, length = _per_item(t, length)
        span = self.max_length - self.min_length
        mu = -(self.base_shift + (self.max_shift - self.base_shift) * (length - self.min_length) / span)
        out = 1 - torch.exp(mu) / (torch.exp(mu) + (1 / (1 - t_grid) - 1))
        return torch.sin(out * math.pi / 2) if self.use_sine else out


class FluxShift:
    """Flux/SD3 shift t' = a t / (1 + (a - 1) t), with a interpolated log-linearly in log(L) between
    alpha_min (at min_length) and alpha_max (at max_length)."""

    def __init__(self, min_length: int = 256, max_length: int = 4096, alpha_min: float = 1.0, alpha_max: float = 1.0):
        self.min_length = min_length
        self.max_length = max_length
        self.alpha_min = alpha_min
        self.alpha_max = alpha_max

    def alpha(self, seq_len: torch.Tensor) -> torch.Tensor:
        log_min, log_max = math.log(self.min_length), math.log(self.max_length)
        if log_max == log_min:
            log_max += 1e-8  # constant alpha: avoid 0/0
        frac = (torch.log(seq_len.float().clamp(self.min_length, self.max_length)) - log_min) / (log_max - log_min)
        lo, hi = math.log(max(self.alpha_min, 1e-8)), math.log(max(self.alpha_max, 1e-8))
        return torch.exp(lo + frac * (hi - lo))

    def shift(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        t_grid, a = _per_item(t, self.alpha(seq_len))
        return a * t_grid / (1 + (a - 1.0) * t_grid)


class NoShift:
    def shift(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        return t


SHIFT_TYPES = {"logsnr": LogSNRShift, "full": FullShift, "flux": FluxShift, "none": NoShift}


def shift_from_options(options: dict | None) -> DistributionShift:
    """The sampling shift of a model config's `sampling_distribution_shift_options`.

    Absent or null (every released config) means LogSNR with rate 0: -6.2 -> 2.0 regardless of length.
    A dict without "type" means "full", as in the reference.
    """
    if options is None:
        return LogSNRShift(anchor_length=2000, anchor_logsnr=-6.2, rate=0.0, logsnr_end=2.0)
    kwargs = dict(options)
    kind = kwargs.pop("type", "full")
    if kind not in SHIFT_TYPES:
        raise ValueError(f"distribution shift type {kind!r} is unknown; allowed: {', '.join(map(repr, SHIFT_TYPES))}")
    try:
        return SHIFT_TYPES[kind](**kwargs)
    except TypeError as err:
        raise ValueError(f"distribution shift options {options!r} are invalid for type {kind!r}: {err}") from None


# -- schedule ------------------------------------------------------------------------------------


def build_schedule(
    steps: int,
    seq_lens: torch.Tensor | Sequence[int],
    sigma_max: float = 1.0,
    shift: DistributionShift | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-item timesteps (B, steps + 1), from sigma_max down to exactly 0.

    `seq_lens` (B,) are the lengths the shift sees: each item's unpadded latent count
    (`use_effective_length_for_schedule`, what generate() does) or the full latent length.
    After shifting, the first value is put back to sigma_max so that it matches how the start point
    was noised; the second value can then exceed the first when sigma_max < 1 (a reference quirk
    kept on purpose).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; a positive integer is required")
    _check_noise_level(sigma_max, "sigma_max")
    lengths = torch.as_tensor(seq_lens, dtype=torch.float32, device=device).reshape(-1).clamp(min=1)
    t = torch.linspace(sigma_max, 0, steps + 1, device=device, dtype=torch.float32)
    if shift is not None:
        t = shift.shift(t, lengths)
    t = t.reshape(-1, steps + 1).expand(lengths.shape[0], -1).clone()
    t[:, 0] = sigma_max
    return t


def default_sampler(diffusion_objective: str) -> str:
    """ping-pong for the post-trained (`rf_denoiser`) models, Euler for the base (`rectified_flow`) ones."""
    if diffusion_objective not in DEFAULT_SAMPLER:
        raise ValueError(
            f"diffusion_objective={diffusion_objective!r} is not supported; allowed: "
            f"{', '.join(map(repr, DEFAULT_SAMPLER))}"
        )
    return DEFAULT_SAMPLER[diffusion_objective]


# -- samplers ------------------------------------------------------------------------------------


def _columns(schedule: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, N) schedule on x's device; a shared (N,) schedule is repeated per item."""
    if schedule.dim() == 1:
        schedule = schedule.unsqueeze(0).expand(x.shape[0], -1)
    if schedule.dim() != 2 or schedule.shape[0] != x.shape[0] or schedule.shape[1] < 2:
        raise ValueError(
            f"schedule of shape {tuple(schedule.shape)} does not fit a batch of {x.shape[0]}; "
            "expected (batch, steps + 1) or (steps + 1,) with at least 2 points"
        )
    return schedule.to(x.device)


def _report(
    callback: StepCallback | None, i: int, steps: int, t: torch.Tensor, x: torch.Tensor, denoised: torch.Tensor
) -> None:
    if callback is not None:
        callback({"i": i, "steps": steps, "t": t, "x": x, "denoised": denoised})


def sample_pingpong(
    denoise: Denoiser,
    x: torch.Tensor,
    schedule: torch.Tensor,
    callback: StepCallback | None = None,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
) -> torch.Tensor:
    """Ping-pong sampling for distilled models: jump to the clean estimate, re-noise to the next t with
    fresh noise. The final step re-noises with weight 0, but still draws (RNG order)."""
    schedule = _columns(schedule, x)
    steps = schedule.shape[1] - 1
    for i in range(steps):
        t_now = schedule[:, i].to(x.dtype)
        t_next = schedule[:, i + 1].to(x.dtype)[:, None, None]
        denoised = x - t_now[:, None, None] * denoise(x, t_now)
        _report(callback, i, steps, t_now, x, denoised)
        x = (1 - t_next) * denoised + t_next * randn_like(x)
    return x


def sample_euler(
    denoise: Denoiser, x: torch.Tensor, schedule: torch.Tensor, callback: StepCallback | None = None
) -> torch.Tensor:
    """Euler integration of the flow ODE: x += (t_next - t) v(x, t). No randomness."""
    schedule = _columns(schedule, x)
    steps = schedule.shape[1] - 1
    for i in range(steps):
        t_now = schedule[:, i].to(x.dtype)
        dt = (schedule[:, i + 1].to(x.dtype) - t_now)[:, None, None]
        v = denoise(x, t_now)
        if callback is not None:
            _report(callback, i, steps, t_now, x, x - t_now[:, None, None] * v)
        x = x + dt * v
    return x


def sample_rk4(
    denoise: Denoiser, x: torch.Tensor, schedule: torch.Tensor, callback: StepCallback | None = None
) -> torch.Tensor:
    """Classic 4-stage Runge-Kutta (4 model calls per step); the last stage is evaluated at
    max(t_next, 1e-5) because the model is never trained at t = 0."""
    schedule = _columns(schedule, x)
    steps = schedule.shape[1] - 1
    for i in range(steps):
        t_now, t_next = schedule[:, i], schedule[:, i + 1]
        dt = (t_next - t_now)[:, None, None]
        k1 = denoise(x, t_now)
        if callback is not None:
            _report(callback, i, steps, t_now, x, x - t_now[:, None, None] * k1)
        t_mid = t_now + (t_next - t_now) / 2
        k2 = denoise(x + dt / 2 * k1, t_mid)
        k3 = denoise(x + dt / 2 * k2, t_mid)
        k4 = denoise(x + dt * k3, t_next.clamp(min=1e-5))
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def _log_snr(t: torch.Tensor) -> torch.Tensor:
    return ((1 - t).clamp(min=1e-10) / t.clamp(min=1e-10)).log()


def sample_dpmpp(
    denoise: Denoiser, x: torch.Tensor, schedule: torch.Tensor, callback: StepCallback | None = None
) -> torch.Tensor:
    """DPM-Solver++(2M) in rectified-flow form: first-order on the first and the final step, otherwise a
    second-order correction from the previous clean estimate, with step ratios measured in log-SNR."""
    schedule = _columns(schedule, x)
    steps = schedule.shape[1] - 1
    previous = None
    for i in range(steps):
        t_now, t_next = schedule[:, i][:, None, None], schedule[:, i + 1][:, None, None]
        denoised = x - t_now * denoise(x, schedule[:, i])
        _report(callback, i, steps, schedule[:, i], x, denoised)
        # (t_next - t) / ((1 - t_next) t) is expm1(-h) written without log-SNR, finite at t = 0 and 1.
        coeff = (t_next - t_now) / ((1 - t_next).clamp(min=1e-10) * t_now.clamp(min=1e-10))
        target = denoised
        if previous is not None and not bool((t_next == 0).all()):
            t_prev = schedule[:, i - 1][:, None, None]
            r = (_log_snr(t_now) - _log_snr(t_prev)) / (_log_snr(t_next) - _log_snr(t_now))
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (t_next / t_now.clamp(min=1e-10)) * x - (1 - t_next) * coeff * target
        previous = denoised
    return x


SAMPLER_FUNCTIONS = {"pingpong": sample_pingpong, "euler": sample_euler, "rk4": sample_rk4, "dpmpp": sample_dpmpp}


def sample(
    denoise: Denoiser,
    x: torch.Tensor,
    schedule: torch.Tensor,
    sampler: str = "pingpong",
    callback: StepCallback | None = None,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
) -> torch.Tensor:
    """Run the named sampler from x (already noised to schedule[:, 0]) down to t = 0.

    `randn_like` supplies the stochastic samplers' fresh noise (torch's global generator by default).
    """
    if sampler not in SAMPLER_FUNCTIONS:
        raise ValueError(f"sampler_type={sampler!r} is unknown; allowed: {', '.join(map(repr, SAMPLERS))}")
    if sampler == "pingpong":
        return sample_pingpong(denoise, x, schedule, callback, randn_like)
    return SAMPLER_FUNCTIONS[sampler](denoise, x, schedule, callback)
