"""Rectified-flow sampling: seeding, timestep schedules (with distribution shifts) and samplers.

Convention: t = 1 is pure noise, t = 0 is data, x_t = (1 - t) x_0 + t noise, and the model predicts the
velocity v = noise - x_0, so `x - t v` is its estimate of the clean latents.

Every sampler is a short step function (see "samplers" below); `denoise(x, t) -> v` is the guided
DiT call (conditioning bound by the caller) and `t` has shape (B,).
Schedules are per batch item, shape (B, steps + 1): items of different valid lengths may get different
schedules when the shift depends on the length.

Random draws come in the reference's order, so a seeded run reproduces the official ones: the
starting noise (one `randn`), then ping-pong's one `randn_like(x)` per step (the last one too, where
it is multiplied by 0). Euler, RK4 and DPM++ draw nothing. Where they come from (torch's global
generator, or one generator per batch item) is the caller's choice (`models.noise.NoiseSource`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from .request import RANDOM_SEED_RANGE, SAMPLERS, SEED_MAX, SEED_MIN
from .request import default_sampler as default_sampler  # re-exported: part of the sampling vocabulary

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`denoise(x (B, C, T), t (B,)) -> v (B, C, T)`: the model's (guided) velocity."""

StepCallback = Callable[[dict], None]
"""Called once per step with {"i", "steps", "t", "x", "denoised"} (x before the update)."""



# -- seeding and noise ---------------------------------------------------------------------------


def seed_generator(seed: int = -1) -> int:
    """Seed torch's global generators (CPU and every CUDA device) as generate() does; returns the seed.

    -1 picks a random seed in [0, 99999), like the reference (`request` states the seed rules).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(f"seed={seed!r} is invalid; an integer in [-1, 2**63 - 1] is required (-1: random)")
    seed = random_seed() if seed == -1 else int(seed)
    torch.manual_seed(seed)
    return seed


def random_seed() -> int:
    """A seed for -1: uniform in the reference's range [0, 99999)."""
    return int(np.random.randint(*RANDOM_SEED_RANGE))


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


# -- samplers ------------------------------------------------------------------------------------
#
# Each sampler is one step function `step(calls, x, k, previous) -> (x_next, denoised)`: `calls` are
# the denoisers of the step's model calls (one each, four for RK4; the plan picks guided or plain
# for each), `k` the step's tensors from `step_tables` (t, t_next and what the sampler needs),
# `previous` the last step's clean estimate. A step does no host synchronisation and branches on
# nothing but Python values fixed for the run, so it can be compiled or captured whole.


def pingpong_step(calls, x, k, previous):
    """Ping-pong (distilled models): jump to the clean estimate, re-noise to t_next with fresh noise
    (drawn even at the last step, where its weight is 0)."""
    t, t_next = k["t"], k["t_next"][:, None, None]
    denoised = x - t[:, None, None] * calls[0](x, t)
    return (1 - t_next) * denoised + t_next * k["noise"], denoised


def euler_step(calls, x, k, previous):
    """Euler integration of the flow ODE: x += (t_next - t) v(x, t). No randomness."""
    t = k["t"]
    v = calls[0](x, t)
    return x + (k["t_next"] - t)[:, None, None] * v, x - t[:, None, None] * v


def rk4_step(calls, x, k, previous):
    """Classic 4-stage Runge-Kutta; the last stage at max(t_next, 1e-5): the model never saw t = 0."""
    t, t_next = k["t"], k["t_next"]
    dt = (t_next - t)[:, None, None]
    k1 = calls[0](x, t)
    t_mid = t + (t_next - t) / 2
    k2 = calls[1](x + dt / 2 * k1, t_mid)
    k3 = calls[2](x + dt / 2 * k2, t_mid)
    k4 = calls[3](x + dt * k3, t_next.clamp(min=1e-5))
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4), x - t[:, None, None] * k1


def dpmpp_step(calls, x, k, previous):
    """DPM-Solver++(2M) in rectified-flow form. `k["c"]` is 1 / (2 r) (r: the log-SNR step ratio)
    where the second-order correction applies and 0 on the first and the final step."""
    t, t_next = k["t"][:, None, None], k["t_next"][:, None, None]
    denoised = x - t * calls[0](x, k["t"])
    # (t_next - t) / ((1 - t_next) t) is expm1(-h) written without log-SNR, finite at t = 0 and 1.
    coeff = (t_next - t) / ((1 - t_next).clamp(min=1e-10) * t.clamp(min=1e-10))
    c = k["c"][:, None, None]
    target = (1 + c) * denoised - c * previous
    return (t_next / t.clamp(min=1e-10)) * x - (1 - t_next) * coeff * target, denoised


STEPS = {"pingpong": pingpong_step, "euler": euler_step, "rk4": rk4_step, "dpmpp": dpmpp_step}
CALLS_PER_STEP = {"pingpong": 1, "euler": 1, "rk4": 4, "dpmpp": 1}


def _log_snr(t: torch.Tensor) -> torch.Tensor:
    return ((1 - t).clamp(min=1e-10) / t.clamp(min=1e-10)).log()


def step_tables(sampler: str, schedule: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Per-step tensors (steps, B) of a (B, steps + 1) schedule, in the dtypes the sampler uses: the
    ping-pong and Euler steps see t in the latents' dtype, RK4 and DPM++ in float32."""
    t, t_next = schedule[:, :-1].T, schedule[:, 1:].T
    if sampler in ("pingpong", "euler"):
        return {"t": t.to(dtype), "t_next": t_next.to(dtype)}
    tables = {"t": t.contiguous(), "t_next": t_next.contiguous()}
    if sampler == "dpmpp":
        c = torch.zeros_like(t)
        for i in range(1, t.shape[0]):
            if not bool((t_next[i] == 0).all()):
                r = (_log_snr(t[i]) - _log_snr(t[i - 1])) / (_log_snr(t_next[i]) - _log_snr(t[i]))
                c[i] = 1 / (2 * r)
        tables["c"] = c
    return tables


def call_times(sampler: str, tables: dict[str, torch.Tensor]) -> list[list[float]]:
    """For every step, the first item's t at each model call (guidance decides on it)."""
    t, t_next = tables["t"][:, 0].float(), tables["t_next"][:, 0].float()
    if sampler != "rk4":
        return [[v] for v in t.tolist()]
    mid = t + (t_next - t) / 2
    return [list(row) for row in zip(t.tolist(), mid.tolist(), mid.tolist(), t_next.clamp(min=1e-5).tolist(),
                                     strict=True)]


def sample(
    denoise: Denoiser,
    x: torch.Tensor,
    schedule: torch.Tensor,
    sampler: str = "pingpong",
    callback: StepCallback | None = None,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
) -> torch.Tensor:
    """Run the named sampler from x (already noised to schedule[:, 0]) down to t = 0 with one
    denoiser for every call (the plain loop; generate() runs the same steps from its plan).

    `randn_like` supplies ping-pong's fresh noise, one draw per step (torch's global generator by default).
    """
    if sampler not in STEPS:
        raise ValueError(f"sampler_type={sampler!r} is unknown; allowed: {', '.join(map(repr, SAMPLERS))}")
    schedule = _columns(schedule, x)
    tables = step_tables(sampler, schedule, x.dtype)
    calls = (denoise,) * CALLS_PER_STEP[sampler]
    steps = schedule.shape[1] - 1
    previous = torch.zeros_like(x)
    for i in range(steps):
        k = {name: table[i] for name, table in tables.items()}
        if sampler == "pingpong":
            k["noise"] = randn_like(x)
        x_next, previous = STEPS[sampler](calls, x, k, previous)
        if callback is not None:
            callback({"i": i, "steps": steps, "t": k["t"], "x": x, "denoised": previous})
        x = x_next
    return x


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
