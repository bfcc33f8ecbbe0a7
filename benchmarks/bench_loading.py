"""Load time and peak memory of `StableAudioModel.from_pretrained` on a full-size model.

    python benchmarks/bench_loading.py [--model small-music] [--device cpu] [--dtype float32] [--runs 2]
        [--keep | --files DIR] [--prewarm-meta]

A full-size checkpoint is fabricated from the golden manifests (random weights: loading cost does
not depend on the values): the float32 `model.safetensors` of the model, and a bfloat16 T5Gemma
folder (encoder at its real size, a few decoder tensors as in the real file, which holds the whole
encoder-decoder; the real config sizes; the tiny fixture's tokenizer files). It is loaded as a
ComfyUI-style single file: `from_pretrained(file, config=<model>, text_encoder=<folder>)`.

Each run is a fresh Python process that reports the wall time of `from_pretrained` and its peak
resident memory (ru_maxrss), next to the summed size of the two weight files. Target: peak RSS
below 1.3x that sum. The files live in a temporary folder (~2.9 GB for small, ~9.8 GB for medium)
that is deleted afterwards unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(os.environ.get("SA3_GOLDEN", REPO.parent / "shared" / "golden"))
SAFETENSORS_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16"}
# Encoder-decoder leftovers that the real T5Gemma file carries; the loader must skip them unread.
T5_DECODER_EXTRA = {
    "model.decoder.embed_tokens.weight": (256000, 768),
    "model.decoder.layers.0.self_attn.q_proj.weight": (768, 768),
    "model.decoder.layers.0.cross_attn.q_proj.weight": (768, 768),
    "model.decoder.norm.weight": (768,),
}


def write_random_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> int:
    """Stream random tensors to a safetensors file one at a time (never the whole model in memory)."""
    header, offset = {}, 0
    item = torch.empty((), dtype=dtype).element_size()
    for key, shape in shapes.items():
        nbytes = item * int(torch.Size(shape).numel())
        header[key] = {
            "dtype": SAFETENSORS_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for shape in shapes.values():
            t = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
            f.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return path.stat().st_size


def fabricate(model: str, folder: Path) -> tuple[Path, Path]:
    manifests = GOLDEN / "manifests"
    data = json.loads((manifests / f"{model}.json").read_text())
    ckpt = folder / f"{model}.safetensors"
    write_random_safetensors(ckpt, {t["key"]: tuple(t["shape"]) for t in data["tensors"]}, torch.float32)
    t5_data = json.loads((manifests / "t5gemma-b-b-ul2.encoder.json").read_text())
    t5 = folder / "t5gemma-b-b-ul2"
    t5.mkdir()
    shapes = {t["key"]: tuple(t["shape"]) for t in t5_data["tensors"]} | T5_DECODER_EXTRA
    write_random_safetensors(t5 / "model.safetensors", shapes, torch.bfloat16)
    config = {"model_type": "t5gemma", "is_encoder_decoder": True, "torch_dtype": "bfloat16", **t5_data["config_used"]}
    config.pop("source", None)
    (t5 / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(GOLDEN / "tiny-small" / "t5gemma-b-b-ul2" / name, t5 / name)
    return ckpt, t5


MEASURE = r"""
import json, resource, sys, time


def peak_rss() -> int:
    # VmHWM restarts at exec; ru_maxrss would include the parent's memory at fork time.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


import torch
torch.set_num_threads(2)
from stable_audio_3 import StableAudioModel
ckpt, model, t5, device, dtype, prewarm = sys.argv[1:7]
if prewarm == "1":  # the first arithmetic on a meta tensor imports torch._refs / dynamo (seconds)
    with torch.device("meta"):
        1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
before = peak_rss()
start = time.perf_counter()
m = StableAudioModel.from_pretrained(ckpt, device=device, config=model, text_encoder=t5, dtype=dtype)
if device.startswith("cuda"):
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
print(json.dumps({"seconds": seconds, "peak_rss": peak_rss(), "import_rss": before, "gpu_peak": gpu}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small-music", help="a manifest name: small-music, medium, ...")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--runs", type=int, default=2, help="fresh processes to measure (the files stay in page cache)")
    p.add_argument("--workdir", default=None, help="where to write the files (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the fabricated files")
    p.add_argument("--files", default=None, help="reuse a folder kept by --keep instead of fabricating")
    p.add_argument(
        "--prewarm-meta",
        action="store_true",
        help="do one meta-tensor op before timing (separates torch's one-off import cost)",
    )
    args = p.parse_args()

    reuse = args.files is not None
    folder = Path(args.files) if reuse else Path(tempfile.mkdtemp(prefix="sa3-bench-loading-", dir=args.workdir))
    try:
        start = time.perf_counter()
        if reuse:
            ckpt, t5 = folder / f"{args.model}.safetensors", folder / "t5gemma-b-b-ul2"
        else:
            ckpt, t5 = fabricate(args.model, folder)
        sizes = ckpt.stat().st_size + (t5 / "model.safetensors").stat().st_size
        print(
            f"{args.model} ready in {time.perf_counter() - start:.1f} s: model {ckpt.stat().st_size / 1e9:.3f} GB"
            f" + T5 {(t5 / 'model.safetensors').stat().st_size / 1e9:.3f} GB = {sizes / 1e9:.3f} GB ({folder})"
        )
        print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, {os.cpu_count()} CPUs")
        for run in range(args.runs):
            argv = [str(ckpt), args.model, str(t5), args.device, args.dtype, str(int(args.prewarm_meta))]
            out = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                sys.exit(f"run {run + 1} failed:\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            ratio = r["peak_rss"] / sizes
            gpu = f", GPU peak {r['gpu_peak'] / 1e9:.2f} GB" if r["gpu_peak"] else ""
            print(
                f"run {run + 1}: load {r['seconds']:.2f} s, peak RSS {r['peak_rss'] / 1e9:.2f} GB "
                f"(after imports {r['import_rss'] / 1e9:.2f} GB) = {ratio:.2f}x the files{gpu}; "
                f"target < 1.3x: {'ok' if ratio < 1.3 else 'MISSED'}"
            )
    finally:
        if args.keep or reuse:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
