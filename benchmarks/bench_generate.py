"""End-to-end generation benchmark on full-size architectures with random weights (no download).

    python benchmarks/bench_generate.py --seconds 10 30 120      # small-music, every CPU tier
    python benchmarks/bench_generate.py --model medium --seconds 5 30 --settings float16 float16+compile

Settings: a precision tier (`stable_audio_3.precision.TIERS`: float32, bfloat16, float16, int8,
int8-bf16), optionally `+compile` (`compile=True`). float32 eager, the baseline, always runs first.
Default: every tier this device can run, eager and compiled.

Builds the model from the packaged config (the shapes of the real checkpoint), the T5Gemma encoder at
its real size, random weights scaled like a trained network's, then times text encoding + sampling +
decode. Prints the CPU's features (or the GPU's name) and one row per setting and duration: median
time over the repeats after one warm-up (which includes compiling), peak memory, realtime factor,
the speed-up against float32 eager in the same run, and the quality gates: (a) the lowest SNR of one
DiT forward against float32 at t = 1, 0.5, 0.1 (pass: >= 30 dB), (b) the SAME decoder alone on the
baseline's latents (pass: >= 25 dB). End-to-end audio SNR is no gate: on random weights bf16 vs
float32 differs as much as two seeds do.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import time
from pathlib import Path

import torch

from stable_audio_3.api import build_autoencoder
from stable_audio_3.compiling import compile_components
from stable_audio_3.loading import packaged_config
from stable_audio_3.models.conditioning import Conditioner, PromptTokenizer, TextEncoder
from stable_audio_3.models.dit import DiffusionTransformer
from stable_audio_3.models.t5gemma import T5GemmaEncoder, T5GemmaEncoderConfig
from stable_audio_3.pipeline import Components, generate
from stable_audio_3.precision import (
    TIERS,
    apply_tier,
    cpu_has_bf16_units,
    cpu_has_int8_dot,
    decoder_gate,
    describe_cpu,
    dit_gate,
)
from stable_audio_3.request import GenerationRequest, ModelDefaults

T5_CONFIG = {  # google/t5gemma-b-b-ul2 encoder (spec §4.2; shapes confirmed by the manifest)
    "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_key_value_heads": 12, "head_dim": 64, "vocab_size": 256000, "query_pre_attn_scalar": 64,
    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh", "sliding_window": 4096,
    "layer_types": ["sliding_attention", "full_attention"] * 6,
}
TOKENIZER_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "tiny-small" / "t5gemma-b-b-ul2"


@torch.no_grad()
def randomise(module: torch.nn.Module, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """Materialise a meta module with weights ~ N(0, 1/fan_in) (norm gains 1), like a trained net's scale."""
    module = module.to_empty(device=device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        elif name.endswith(("gamma", "weight", "alpha", "weight_g", "running_std")):
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    for name, b in module.named_buffers():
        if name.endswith("inv_freq"):
            dim = b.numel() * 2
            b.copy_(1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)))
    return module


def default_settings(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["float32", "float16", "float16+compile", "bfloat16+compile"]
    tiers = ["float32", "int8"] + (["bfloat16", "int8-bf16"] if cpu_has_bf16_units() else [])
    tiers = [t for t in tiers if cpu_has_int8_dot() or not TIERS[t].int8]  # without VNNI int8 is inexact
    return tiers + [f"{t}+compile" for t in tiers]


def parse_setting(setting: str) -> tuple[str, bool]:
    tier, _, extra = setting.partition("+")
    if tier not in TIERS or extra not in ("", "compile"):
        raise SystemExit(f"setting {setting!r} is invalid; a tier ({', '.join(TIERS)}), optionally +compile")
    return tier, extra == "compile"


def build(model: str, device: torch.device, setting: str, compile: bool = False) -> Components:
    """The full-size model with random weights in `setting`'s tier (as from_pretrained would load it)."""
    name, compiled = parse_setting(setting)
    tier = TIERS[name]
    cfg = packaged_config(model)
    with torch.device("meta"):
        dit = DiffusionTransformer.from_config(cfg["model"]["diffusion"]["config"])
        cond = Conditioner.from_config(cfg["model"]["conditioning"], cfg["model"]["diffusion"])
        t5 = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(T5_CONFIG))
    dit = randomise(dit, device, 1).to(tier.dit).eval()
    cond = randomise(cond, device, 2).to(tier.conditioner).eval()
    t5 = randomise(t5, device, 3).to(torch.bfloat16).eval()  # the real file is bf16
    ae = randomise(build_autoencoder(cfg, None, model), device, 4).to(tier.autoencoder).eval()
    apply_tier(tier, dit, ae, t5)
    prompt = cond.prompt_conditioners()["prompt"]
    prompt.attach(TextEncoder(PromptTokenizer.from_dir(TOKENIZER_DIR, prompt.max_length), t5))
    c = Components(cond, dit, ae, cfg, device)
    if compile or compiled:
        compile_components(c)
    return c


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: reset the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> float:
    """GiB: the GPU's peak allocation, or the process's peak resident memory since the last reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def run(c: Components, seconds: float, batch: int, repeats: int) -> float:
    """Median end-to-end time after one full warm-up (which also compiles what `compile` asked for)."""
    generate_once(c, seconds, batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate_once(c, seconds, batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generate_once(c: Components, seconds: float, batch: int, return_latents: bool = False) -> torch.Tensor:
    with torch.inference_mode():
        request = GenerationRequest(prompt=["a warm analog synth pad, 90 BPM"] * batch, duration=seconds,
                                    seed=[7] * batch, return_latents=return_latents)
        out, _ = generate(c, request.resolve(ModelDefaults.from_config(c.config)))
    if c.device.type == "cuda":
        torch.cuda.synchronize()
    return out


def gates(reference: Components, c: Components, latents: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """(a) the lowest DiT-forward SNR over t = 1, 0.5, 0.1 and (b) the decoder SNR, against float32."""
    g = torch.Generator().manual_seed(seed)
    length = latents.shape[-1]
    x = torch.randn(1, latents.shape[1], length, generator=g).to(c.device)
    cross = torch.randn(1, 128, 768, generator=g).to(c.device)
    glob = torch.randn(1, 768, generator=g).to(c.device)
    local = torch.zeros(1, latents.shape[1] + 1, length, device=c.device)
    a = min(dit_gate(reference.dit, c.dit, x, cross, glob, local).values())
    return a, decoder_gate(reference.autoencoder, c.autoencoder, latents[:1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small-music")
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0, 120.0])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--settings", nargs="+", default=None,
                   help="tiers, each optionally +compile (default: every tier of the device, eager and compiled)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    settings = ["float32"] + [s for s in (args.settings or default_settings(device)) if s != "float32"]
    for setting in settings:
        parse_setting(setting)
    if device.type == "cuda":
        where = f"GPU: {torch.cuda.get_device_name()}"
    else:
        where = f"CPU: {describe_cpu()}; {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; model {args.model} (random weights, full size); median of "
          f"{args.repeats} after a warm-up; baseline: float32 eager in the same run")
    print("| seconds | batch | setting | median s | peak GiB | x realtime | speed-up vs float32 "
          "| gate (a) DiT dB | gate (b) decoder dB |")
    print("|---|---|---|---|---|---|---|---|---|")
    reference = build(args.model, device, "float32")
    for seconds in args.seconds:
        for batch in args.batch:
            base = None
            for setting in settings:
                c = reference if setting == "float32" else build(args.model, device, setting)
                reset_peak_memory(device)
                t = run(c, seconds, batch, args.repeats)
                if base is None:  # the gates' decoder input: the baseline's latents
                    base = (t, generate_once(c, seconds, batch, return_latents=True))
                gate = ("-", "-") if setting == "float32" else (f"{x:.1f}" for x in gates(reference, c, base[1]))
                print(f"| {seconds:g} | {batch} | {setting} | {t:.2f} | {peak_memory(device):.2f} | "
                      f"{seconds * batch / t:.2f} | {base[0] / t:.2f} | {' | '.join(gate)} |", flush=True)
                if c is not reference:
                    del c
                    torch._dynamo.reset()


if __name__ == "__main__":
    main()
