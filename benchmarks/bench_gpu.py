"""GPU benchmark matrix: eager float16 against compile=True float16, full-size architectures, random weights.

    python benchmarks/bench_gpu.py --report gpu_report.md                    # the whole matrix
    python benchmarks/bench_gpu.py --matrix small-music:5,30 medium:30 --budget 120 --report r.md
    python benchmarks/bench_gpu.py --device cpu --models small-music --seconds 1 --repeats 1 --steps 2

Matrix (default): small-music at 5 / 30 / 120 s, medium at 5 / 30 / 120 / 380 s; per duration one row
for eager fp16 and one for compiled fp16 (on CUDA: the whole sampling step under torch.compile,
captured as a CUDA graph per latent-length bucket, and the SAME decoder's blocks compiled; on the CPU
the regional compile). Each model is built once with `bench_generate.build(model, device, "float16")`
(the packaged config's shapes, the T5Gemma encoder at its real size, random weights). Per duration
the eager row runs first, then the compiled row on a compile=True variant (`compile_components`, as
`build(..., compile=True)` does) that shares the text encoder and the DiT but compiles its own copy of
the autoencoder (on the CPU, where the DiT's blocks are compiled in place, of the DiT too); the copy
is dropped after the row, with `torch._dynamo.reset()`, so every compiled row starts cold and holds
only its own CUDA graph.

Columns: median end-to-end seconds over the repeats after a warm-up (`bench_generate.run`: text
encoder + sampling + decode), realtime factor, peak GPU memory in GiB (torch.cuda.max_memory_allocated,
reset before each row; the weights included, the compiled row's extra copy subtracted; on the CPU the
process's maximum RSS), the speed-up of compiled over eager at that duration, and the first call's
seconds (for compiled rows: compiling and capturing the step and compiling the decoder at that
length). The report (markdown) is rewritten after every row, so a run stopped by `--budget` or a
timeout still leaves the rows it finished.

The tokenizer is the tiny fixtures' T5Gemma tokenizer (the real vocabulary): --tokenizer DIR, else
$SA3_GOLDEN/tiny-small/t5gemma-b-b-ul2, ../shared/golden/... beside the checkout, ./shared/golden/...
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generate  # noqa: E402  (the sibling benchmark: build(), run(), peak_memory())

from stable_audio_3.compiling import compile_components, default_mode  # noqa: E402
from stable_audio_3.loading import packaged_config  # noqa: E402
from stable_audio_3.pipeline import Components  # noqa: E402
from stable_audio_3.request import ModelDefaults  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MATRIX = {"small-music": [5.0, 30.0, 120.0], "medium": [5.0, 30.0, 120.0, 380.0]}
MODES = ("eager", "compiled")
SETTING = "float16"
PROMPT = "a warm analog synth pad, 90 BPM"  # bench_generate.run's prompt
TOKENIZER_SUBDIR = Path("golden") / "tiny-small" / "t5gemma-b-b-ul2"


def tokenizer_candidates(given: str | None) -> list[Path]:
    if given:
        return [Path(given)]
    paths = [Path(os.environ["SA3_GOLDEN"]) / "tiny-small" / "t5gemma-b-b-ul2"] if os.environ.get("SA3_GOLDEN") else []
    return paths + [Path(bench_generate.TOKENIZER_DIR), REPO / "shared" / TOKENIZER_SUBDIR]


def parse_matrix(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(model, seconds) pairs in order: --matrix SPEC..., else --models with --seconds (or MATRIX's)."""
    if args.matrix:
        pairs = []
        for spec in args.matrix:
            model, _, seconds = spec.partition(":")
            durations = [float(s) for s in seconds.split(",") if s] if seconds else MATRIX.get(model, [])
            pairs += [(model, s) for s in durations]
        return pairs
    return [(m, s) for m in args.models for s in (args.seconds or MATRIX.get(m, [5.0]))]


def first_call(c, seconds: float, batch: int) -> float:
    """Seconds of the first end-to-end generation (compiles, captures)."""
    start = time.perf_counter()
    bench_generate.generate_once(c, seconds, batch)
    return time.perf_counter() - start


def measure(c, seconds: float, batch: int, repeats: int) -> dict:
    gc.collect()
    if c.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    first = first_call(c, seconds, batch)
    median = bench_generate.run(c, seconds, batch, repeats)
    return {"median": median, "peak": bench_generate.peak_memory(c.device), "first": first}


def compiled_variant(c: Components) -> tuple[Components, int]:
    """A compile=True variant of `c` sharing its text encoder (and for the CUDA step compile its DiT),
    and the bytes of the modules it copies (those that compiling changes in place)."""
    mode = default_mode(c.device)
    copies = {"autoencoder": copy.deepcopy(c.autoencoder)}
    if mode == "regional":
        copies["dit"] = copy.deepcopy(c.dit)
    variant = dataclasses.replace(c, **copies)
    compile_components(variant, mode)
    size = sum(t.numel() * t.element_size() for m in copies.values() for t in (*m.parameters(), *m.buffers()))
    return variant, size


def measure_mode(c: Components, mode: str, seconds: float, batch: int, repeats: int) -> dict | str:
    torch._dynamo.reset()  # a cold start: no earlier bucket's graph or memory pool
    variant, extra = compiled_variant(c) if mode == "compiled" else (c, 0)
    try:
        row = measure(variant, seconds, batch, repeats)
        if c.device.type == "cuda":
            row["peak"] -= extra / 2**30  # a compile=True process holds one autoencoder, not two
        return row
    except torch.cuda.OutOfMemoryError as e:
        return f"out of memory: {str(e).splitlines()[0][:80]}"
    except Exception as e:  # a failed row is reported and the matrix goes on (the exit status says so)
        traceback.print_exc()
        return f"error: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    finally:
        del variant
        torch._dynamo.reset()


class Report:
    def __init__(self, path: Path | None, header: list[str], batch: int):
        self.path, self.header, self.batch = path, header, batch
        self.rows: dict[tuple[str, float, str], dict | str] = {}
        self.models: list[str] = []  # in the order first measured

    def table(self) -> list[str]:
        lines = ["| model | seconds | mode | median s | x realtime | peak GiB | speed-up vs eager | first call s |",
                 "|---|---|---|---|---|---|---|---|"]
        for (model, seconds, mode), row in self.rows.items():
            lead = f"| {model} | {seconds:g} | {mode} {SETTING} |"
            if isinstance(row, str):
                lines.append(f"{lead} {row} | | | | |")
                continue
            base = self.rows.get((model, seconds, "eager"))
            speedup = f"{base['median'] / row['median']:.2f}" if mode != "eager" and isinstance(base, dict) else "-"
            lines.append(f"{lead} {row['median']:.3f} | {seconds * self.batch / row['median']:.2f} | "
                         f"{row['peak']:.2f} | {speedup} | {row['first']:.1f} |")
        return lines

    def order(self, item: tuple[tuple[str, float, str], dict | str]) -> tuple[int, float, int]:
        (model, seconds, mode), _ = item
        return self.models.index(model), seconds, MODES.index(mode)

    def add(self, key: tuple[str, float, str], row: dict | str) -> None:
        self.rows[key] = row
        self.models += [key[0]] if key[0] not in self.models else []
        self.rows = dict(sorted(self.rows.items(), key=self.order))
        self.write()

    def write(self, notes: tuple[str, ...] = ()) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("\n".join([*self.header, "", *self.table(), *notes]) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MATRIX), help="models (default: small-music medium)")
    p.add_argument("--seconds", type=float, nargs="+", default=None,
                   help="durations for every model (default: the matrix's; longer than a model allows: skipped)")
    p.add_argument("--matrix", nargs="+", default=None, metavar="MODEL[:S,S,...]",
                   help="explicit rows, e.g. small-music:5,30 medium:380 (overrides --models / --seconds)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 8)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokenizer", default=None, help="T5Gemma tokenizer folder (tokenizer.json)")
    p.add_argument("--budget", type=float, default=None, help="start no new row after this many seconds")
    p.add_argument("--report", type=Path, default=None, help="write the markdown report here")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    steps = args.steps or "model default (8)"
    header = ["# GPU benchmark: eager fp16 vs compiled fp16 (bench_gpu.py)", "",
              f"- device: {name}; torch {torch.__version__}",
              f"- full-size architectures, random weights; batch {args.batch}; steps {steps}; median of "
              f"{args.repeats} after a warm-up; end-to-end: T5Gemma + sampling + decode",
              "- compiled: compile=True (CUDA: the sampling step as a CUDA graph per latent-length bucket + the "
              "decoder's blocks); first call s = a cold compile (torch._dynamo.reset() before each compiled row)",
              f"- command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}"]
    for line in header[2:]:
        print(line.removeprefix("- "), flush=True)
    report = Report(args.report, header, args.batch)
    tokenizer = next((d for d in tokenizer_candidates(args.tokenizer) if (d / "tokenizer.json").is_file()), None)
    if tokenizer is None:
        tried = ", ".join(map(str, tokenizer_candidates(args.tokenizer)))
        message = (f"no T5Gemma tokenizer found (tried {tried}); pass --tokenizer DIR (a folder with "
                   "tokenizer.json, e.g. shared/golden/tiny-small/t5gemma-b-b-ul2) or set SA3_GOLDEN")
        print(f"bench_gpu: error: {message}", file=sys.stderr)
        report.write((f"\nerror: {message}",))
        return 2
    bench_generate.TOKENIZER_DIR = tokenizer
    pairs = parse_matrix(args)
    start = time.perf_counter()
    for model in dict.fromkeys(m for m, _ in pairs):  # in the order given; one model built at a time
        limit = ModelDefaults.from_config(packaged_config(model)).max_duration
        c = None
        for seconds in (s for m, s in pairs if m == model):
            for mode in args.modes:
                key = (model, seconds, mode)
                if seconds > limit + 1e-9:
                    row = f"skipped: {model} generates at most {limit:.1f} s"
                elif args.budget is not None and time.perf_counter() - start > args.budget:
                    row = "not run (budget)"
                else:
                    if c is None:
                        c = bench_generate.build(model, device, SETTING)
                        if args.steps:
                            c.config = {**c.config, "default_steps": args.steps}
                    row = measure_mode(c, mode, seconds, args.batch, args.repeats)
                report.add(key, row)
                print(f"{model} {seconds:g} s {mode}: " + (row if isinstance(row, str) else
                      f"median {row['median']:.3f} s, peak {row['peak']:.2f} GiB, first call {row['first']:.1f} s"),
                      flush=True)
        del c
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n" + "\n".join(report.table()))
    if args.report is not None:
        print(f"report: {args.report}")
    return int(any(isinstance(row, str) and row.startswith(("error", "out of memory")) for row in report.rows.values()))


if __name__ == "__main__":
    sys.exit(main())
