"""End-to-end generation benchmark on full-size architectures with random weights (no download).

    python benchmarks/bench_generate.py                  # small-music, 10 and 30 s, every fast path of the device
    python benchmarks/bench_generate.py --model medium --seconds 5 30 120 --settings fp16 --repeats 5

Settings: fp32 (the baseline: the project's default eager float32 path, always measured first),
bf16, fp16 (CUDA), int8 (CPU: `quantize="int8"`). Default: fp32 + int8 on the CPU (+ bf16 where the
CPU has bf16 units: AMX or AVX512-BF16), fp32 + fp16 + bf16 on CUDA.

Builds the model from the packaged config (the shapes of the real checkpoint), the T5Gemma encoder at
its real size, random weights scaled like a trained network's, then times text encoding + sampling +
decode. Prints one table row per setting: device, model, seconds, batch, setting, median time over
the repeats after one warm-up, peak memory, realtime factor, the speed-up against fp32 eager in the
same run, and the SNR of the setting's latents and audio against fp32 for the same seed.
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
from stable_audio_3.models.quant import quantize_model
from stable_audio_3.models.t5gemma import T5GemmaEncoder, T5GemmaEncoderConfig
from stable_audio_3.pipeline import Components, generate
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


SETTINGS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


def cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_settings(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["fp32", "fp16", "bf16"]
    return ["fp32", "int8"] + (["bf16"] if cpu_has_bf16_units() else [])


def build(model: str, device: torch.device, setting: str, compile: bool = False) -> Components:
    dtype = SETTINGS[setting]
    cfg = packaged_config(model)
    with torch.device("meta"):
        dit = DiffusionTransformer.from_config(cfg["model"]["diffusion"]["config"])
        cond = Conditioner.from_config(cfg["model"]["conditioning"], cfg["model"]["diffusion"])
        t5 = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(T5_CONFIG))
    dit = randomise(dit, device, 1).to(dtype).eval()
    cond = randomise(cond, device, 2).to(dtype).eval()
    t5 = randomise(t5, device, 3).to(torch.bfloat16).eval()  # the real file is bf16
    ae = randomise(build_autoencoder(cfg, None, model), device, 4).to(dtype).eval()
    if setting == "int8":
        quantize_model(dit, ae, t5)
    prompt = cond.prompt_conditioners()["prompt"]
    prompt.attach(TextEncoder(PromptTokenizer.from_dir(TOKENIZER_DIR, prompt.max_length), t5))
    c = Components(cond, dit, ae, cfg, device)
    if compile:
        compile_components(c)
    return c


def peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def run(c: Components, seconds: float, batch: int, repeats: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Median end-to-end time, and the latents and audio of the same seed."""
    def once(return_latents: bool = False) -> torch.Tensor:
        with torch.inference_mode():
            request = GenerationRequest(prompt=["a warm analog synth pad, 90 BPM"] * batch, duration=seconds,
                                        seed=[7] * batch, return_latents=return_latents)
            out, _ = generate(c, request.resolve(ModelDefaults.from_config(c.config)))
        if c.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    latents = once(return_latents=True)  # also the warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        audio = once()
        times.append(time.perf_counter() - start)
    return statistics.median(times), latents, audio


def snr_db(ref: torch.Tensor, other: torch.Tensor) -> float:
    noise = (ref.double() - other.double()).pow(2).sum()
    return float(10 * torch.log10(ref.double().pow(2).sum() / noise.clamp_min(1e-30)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small-music")
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=None,
                   help="fp32 bf16 fp16 int8 (default: every fast path of the device; fp32 always runs first)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    settings = ["fp32"] + [s for s in (args.settings or default_settings(device)) if s != "fp32"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; model {args.model} (random weights, full size); "
          f"median of {args.repeats} after a warm-up; baseline: fp32 eager in the same run")
    print("| seconds | batch | setting | median s | peak GiB | x realtime | speed-up vs fp32 "
          "| latent SNR dB | audio SNR dB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seconds in args.seconds:
        for batch in args.batch:
            base = None
            for setting in settings:
                c = build(args.model, device, setting)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t, latents, audio = run(c, seconds, batch, args.repeats)
                if base is None:
                    base = (t, latents, audio)
                snr = ("-", "-") if setting == "fp32" else (f"{snr_db(base[1], latents):.1f}",
                                                           f"{snr_db(base[2], audio):.1f}")
                print(f"| {seconds:g} | {batch} | {setting} | {t:.3f} | {peak_memory(device):.2f} | "
                      f"{seconds * batch / t:.2f} | {base[0] / t:.2f} | {snr[0]} | {snr[1]} |", flush=True)
                del c


if __name__ == "__main__":
    main()
