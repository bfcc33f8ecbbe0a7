#!/usr/bin/env bash
# The GPU check: validate and benchmark stable-audio-3 on one NVIDIA GPU (H100 / H200) in about five
# minutes, and write one markdown report.
#
#   scripts/gpu_check.sh [PYTEST_ARGS...]          # on the GPU machine, from any directory
#   scripts/gpu_check.sh --stage-golden [DEST]     # beforehand, where the fixtures are (see Fixtures)
#
# 1. pytest tests/test_cuda.py tests/test_compile.py: the golden cases on CUDA in float32 and float16,
#    compile=True (the sampling step as a CUDA graph) against eager, no host sync inside the captured
#    step; and the CPU compile tests. Extra arguments go to pytest (e.g. -k 'not float16', -x).
# 2. benchmarks/bench_gpu.py: eager fp16 vs compiled fp16 on full-size random-weight models within a
#    time budget; the rows it does not reach are listed as "not run (budget)".
# Report: $GPU_CHECK_REPORT, else $OUT/gpu_report.md when $OUT is set, else ./gpu_report.md: the GPU
# (nvidia-smi), the pytest summary and the benchmark table. Exit status: pytest's if it failed, else
# the benchmark's; 3 when no GPU is visible. The full logs (gpu_check_pytest.log, gpu_check_bench.log)
# go to $GPU_CHECK_LOGS, else $OUT, else a temporary folder (its path is printed).
#
# Python: $PYTHON, else ./.venv/bin/python when its torch sees a GPU, else python3. The lent GPU
# machines have no internet, but their python3 has torch, pytest, safetensors, tokenizers, numpy and
# huggingface_hub: the package is then used from this checkout (PYTHONPATH), nothing is installed.
# GPU_CHECK_INSTALL=1 instead creates ./.venv and runs `pip install -e .[test]` (needs the network).
#
# Fixtures: $SA3_GOLDEN, else ../shared/golden, else ./shared/golden (without them the parity tests
# skip). The whole set (69 MiB) is more than travels to a lent GPU machine with the checkout (64 MiB):
# `--stage-golden` copies the part this check uses (~42 MB: the tiny models, LoRAs and tokenizers, the
# generate / LoRA cases of the flash semantics, the two cases test_compile.py loads, an index listing
# only those) to DEST (default ./shared/golden, the folder that travels; keep it out of commits).
#
# Knobs (environment):
#   GPU_CHECK_TESTS          pytest targets (default "tests/test_cuda.py tests/test_compile.py"; none: skip)
#   GPU_CHECK_TEST_TIMEOUT   seconds for pytest (default 180; then SIGINT, so pytest still prints a summary;
#                            test_cuda.py runs first, a cut-off test_compile.py can be rerun on its own)
#   GPU_CHECK_MATRIX         benchmark rows (default "small-music:5,30,120 medium:5,30,120,380"; none: skip)
#   GPU_CHECK_BENCH_BUDGET   seconds after which the benchmark starts no new row (default 30: small-music
#                            at 5 s, eager and compiled; the compiled row's cold compile is the long part)
#   GPU_CHECK_BENCH_TIMEOUT  hard limit for the benchmark (default: the budget + 120)
#   GPU_CHECK_BENCH_ARGS     more bench_gpu.py arguments, e.g. "--repeats 5 --steps 8"
# A rerun of the benchmark alone, for the rows the first run did not reach (about 10 minutes):
#   GPU_CHECK_TESTS=none GPU_CHECK_MATRIX="medium:30,120,380" GPU_CHECK_BENCH_BUDGET=420 scripts/gpu_check.sh
set -euo pipefail

CALLER_DIR="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_golden() {
    local d
    for d in "${SA3_GOLDEN:-}" "$ROOT/../shared/golden" "$ROOT/shared/golden"; do
        if [ -n "$d" ] && [ -f "$d/tiny-small/cases/index.json" ]; then
            (cd "$d" && pwd)
            return 0
        fi
    done
    return 1
}

stage_golden() {
    local src dest="${1:-$ROOT/shared/golden}"
    src="$(find_golden)" || { echo "gpu_check: no fixtures found to stage (set SA3_GOLDEN)" >&2; exit 2; }
    python3 - "$src" "$dest" <<'PY'
import json, shutil, sys
from pathlib import Path

src, dest = Path(sys.argv[1]), Path(sys.argv[2])
if dest.exists() and dest.resolve() == src.resolve():
    sys.exit(f"gpu_check: {dest} is the source itself")
KEEP = {"gen_t2a_default", "lora_a_strength1_latents"}  # what test_compile.py loads
dest.mkdir(parents=True, exist_ok=True)
shutil.copy2(src / "tolerances.json", dest / "tolerances.json")
for fixture in ("tiny-small", "tiny-medium"):
    s, d = src / fixture, dest / fixture
    (d / "cases").mkdir(parents=True, exist_ok=True)
    for f in [s / "model.safetensors", *s.glob("model_config*.json")]:
        shutil.copy2(f, d / f.name)
    for folder in ("lora", "t5gemma-b-b-ul2"):
        shutil.copytree(s / folder, d / folder, dirs_exist_ok=True)
    for f in ("signals.safetensors", "shared_inputs.safetensors"):
        if (s / "cases" / f).is_file():
            shutil.copy2(s / "cases" / f, d / "cases" / f)
    index = json.loads((s / "cases" / "index.json").read_text())
    index["cases"] = [c for c in index["cases"] if c["name"] in KEEP or (
        c["kind"] in ("generate", "lora_generate") and c["name"].endswith("__flash"))]
    for c in index["cases"]:
        shutil.copytree(s / "cases" / c["name"], d / "cases" / c["name"], dirs_exist_ok=True)
    (d / "cases" / "index.json").write_text(json.dumps(index, indent=1))
size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
print(f"staged {dest} ({size / 2**20:.1f} MiB) from {src}")
PY
}

if [ "${1:-}" = "--stage-golden" ]; then
    stage_golden "${2:-}"
    exit 0
fi

export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the checkout is what is checked
if SA3_GOLDEN="$(find_golden)"; then
    export SA3_GOLDEN
    GOLDEN_NOTE="$SA3_GOLDEN"
else
    unset SA3_GOLDEN
    GOLDEN_NOTE="not found: the parity tests skip (see --stage-golden)"
fi

if [ "${GPU_CHECK_INSTALL:-0}" = 1 ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q -e ".[test]"
    PY=.venv/bin/python
elif [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' \
        2>/dev/null; then
    PY=.venv/bin/python
else
    PY=python3
fi
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch; set PYTHON to an interpreter with CUDA torch (or GPU_CHECK_INSTALL=1)" >&2
    exit 3
fi
if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check: no CUDA GPU visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)')):" \
        "run this on a GPU machine" >&2
    exit 3
fi

REPORT="${GPU_CHECK_REPORT:-${OUT:+$OUT/gpu_report.md}}"
REPORT="${REPORT:-$CALLER_DIR/gpu_report.md}"
case "$REPORT" in /*) ;; *) REPORT="$CALLER_DIR/$REPORT" ;; esac
mkdir -p "$(dirname "$REPORT")"
WORK="${GPU_CHECK_LOGS:-${OUT:-$(mktemp -d)}}"  # the full pytest / benchmark logs
mkdir -p "$WORK"
rm -f "$WORK/gpu_check_pytest.log" "$WORK/gpu_check_bench.log" "$WORK/gpu_check_bench.md"
TESTS="${GPU_CHECK_TESTS:-tests/test_cuda.py tests/test_compile.py}"
MATRIX="${GPU_CHECK_MATRIX:-small-music:5,30,120 medium:5,30,120,380}"
BUDGET="${GPU_CHECK_BENCH_BUDGET:-30}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-$((${BUDGET%.*} + 120))}"
GPU="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)"
GPU="${GPU:-$("$PY" -c 'import torch; print(torch.cuda.get_device_name())' 2>/dev/null || echo unknown)}"
TORCH="$("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
echo "gpu_check: $GPU; torch $TORCH; python $PY; fixtures $GOLDEN_NOTE; report $REPORT"

test_rc=0
if [ "$TESTS" != none ]; then
    read -ra test_paths <<<"$TESTS"
    set +e
    timeout -s INT -k 30 "${GPU_CHECK_TEST_TIMEOUT:-180}" "$PY" -m pytest -q -p no:cacheprovider \
        "${test_paths[@]}" "$@" 2>&1 | tee "$WORK/gpu_check_pytest.log"
    test_rc=${PIPESTATUS[0]}
    set -e
fi

bench_rc=0
if [ "$MATRIX" != none ]; then
    read -ra matrix <<<"$MATRIX"
    read -ra bench_args <<<"${GPU_CHECK_BENCH_ARGS:-}"
    set +e
    timeout -s INT -k 30 "$BENCH_TIMEOUT" "$PY" benchmarks/bench_gpu.py --matrix "${matrix[@]}" \
        --budget "$BUDGET" --report "$WORK/gpu_check_bench.md" ${bench_args[@]+"${bench_args[@]}"} 2>&1 \
        | tee "$WORK/gpu_check_bench.log"
    bench_rc=${PIPESTATUS[0]}
    set -e
fi

{
    echo "# stable-audio-3 GPU check"
    echo
    echo "- GPU: $GPU"
    echo "- torch $TORCH; python $PY; $(date -u +%Y-%m-%dT%H:%M:%SZ); $(git rev-parse --short HEAD 2>/dev/null \
        || echo 'no git') (+ working tree)"
    echo "- fixtures: $GOLDEN_NOTE"
    echo "- wall time: ${SECONDS} s"
    echo
    echo "## Tests: ${TESTS} (exit $test_rc$([ "$test_rc" = 124 ] && echo ', timed out'))"
    echo
    if [ -f "$WORK/gpu_check_pytest.log" ]; then
        echo '```'
        # the summary: everything from pytest's short test summary on, else the last lines
        if grep -q "short test summary info" "$WORK/gpu_check_pytest.log"; then
            sed -n '/short test summary info/,$p' "$WORK/gpu_check_pytest.log" | tail -n 80
        else
            tail -n 40 "$WORK/gpu_check_pytest.log"
        fi
        echo '```'
    else
        echo "not run"
    fi
    echo
    echo "## Benchmark (exit $bench_rc$([ "$bench_rc" = 124 ] && echo ', timed out'))"
    echo
    if [ -s "$WORK/gpu_check_bench.md" ]; then
        sed 's/^# /### /' "$WORK/gpu_check_bench.md"
    elif [ -f "$WORK/gpu_check_bench.log" ]; then
        echo '```'
        tail -n 40 "$WORK/gpu_check_bench.log"
        echo '```'
    else
        echo "not run"
    fi
} >"$REPORT"
echo "gpu_check: report written to $REPORT (logs in $WORK)"
if [ "$test_rc" != 0 ]; then
    exit "$test_rc"
fi
exit "$bench_rc"
