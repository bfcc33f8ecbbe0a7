"""Time SAME encode/decode at full size with random weights (speed does not depend on the values).

    python benchmarks/bench_autoencoder.py --model same-s --seconds 30 [--device cuda] [--dtype float16]

Prints the device, the setting, absolute times, and the ratio of our blocked band attention to a
dense band-masked SDPA baseline (the reference's last-resort fallback) for the SAME-L window.
"""

from __future__ import annotations

import argparse
import time

import torch

from stable_audio_3.api import build_autoencoder
from stable_audio_3.loading import packaged_config
from stable_audio_3.models import attention as attn


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="same-s", choices=["same-s", "same-l"])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    ae = build_autoencoder(packaged_config(args.model), None, args.model).to_empty(device=device)
    with torch.no_grad():
        for param in ae.parameters():
            param.normal_(0, 0.02)
        for blk in ae.modules():
            if hasattr(blk, "inv_freq"):
                blk.inv_freq.copy_(1.0 / (10000 ** (torch.arange(0, 32, 2, device=device).float() / 32)))
    ae = ae.to(dtype).eval()
    frames = int(args.seconds * 44100 / 4096) // 2 * 2
    latents = torch.randn(1, ae.latent_dim, frames, device=device, dtype=dtype)
    audio = torch.randn(1, 2, frames * 4096, device=device, dtype=dtype) * 0.1
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; model {args.model}; dtype {args.dtype}; {frames} latents = {frames * 4096 / 44100:.1f} s")
    with torch.inference_mode():
        t_enc = timed(lambda: ae.encode_audio(audio), device, args.repeats)
        t_dec = timed(lambda: ae.decode_audio(latents), device, args.repeats)
        t_dec_chunked = timed(lambda: ae.decode_audio(latents, chunked=True), device, args.repeats)
        print(f"encode {t_enc:.3f} s ({args.seconds / t_enc:.1f}x realtime)")
        print(f"decode {t_dec:.3f} s ({args.seconds / t_dec:.1f}x realtime); chunked decode {t_dec_chunked:.3f} s")
        if args.model == "same-l":
            original = attn.band_attention_sdpa

            def dense(q, k, v, window, block=0):
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn.band_mask(q.shape[-2], window, q.device))

            attn.band_attention_sdpa = dense
            try:
                t_base = timed(lambda: ae.decode_audio(latents), device, 1)
            finally:
                attn.band_attention_sdpa = original
            print(f"baseline dense band-masked SDPA decode {t_base:.3f} s; ours is {t_base / t_dec:.2f}x faster")


if __name__ == "__main__":
    main()
