#!/usr/bin/env bash
# One-shot GPU check: everything in this repository that needs a GPU, in one run of at most
# 10 minutes on one GPU, printed at the end as one Markdown block for docs/benchmarks.md:
#   - RDEIC at SD 2.1-base size (random weights): decoding at 2 and 5 steps against a
#     DiffEIC-style 50-step decode, and stage-1 / stage-2 training steps with their peak memory
#     at batch 4 (stage 2 on 256² crops)                      scripts/bench_rdeic.py
#   - CDC at full size, U-Net under bf16: decoding at 1, 17 and 65 steps  scripts/bench_cdc.py
#   - CorrDiff at the paper's size: encode/decode at 8 steps split into ELIC, μ_θ and γ search,
#     and the two γ searches at equal LPIPS budgets              scripts/bench_corrdiff.py
#   - the foundation codec on the same SD: encode, decode at the predicted t and respaced, against
#     CDC's 17-step decoder                                       scripts/bench_foundation.py
#   - every method: decompress(compress(x)) bit-exact on the GPU, and GPU streams decoded on
#     the CPU (same pixels? PSNR between the two?)            scripts/gpu_consistency.py
#
#   bash scripts/gpu_check.sh                       # on a machine with a GPU
#   bash scripts/gpu_check.sh --device cpu --quick  # logic check anywhere: tiny models, few steps
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "usage: bash scripts/gpu_check.sh [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [ "$QUICK" = 1 ]; then
  SIZE=tiny
  RDEIC=(--size tiny --repeats 1 --diffeic-steps 4 --train-batch 1)
  CDC=(--size tiny --steps 1 3 --repeats 1)
  CORRDIFF=(--size tiny --steps 2 --evaluations 2 --budgets 3 --search-size 64)
  FOUNDATION=(--size tiny --steps 1 2 --no-full --repeats 1)
  CONSISTENCY=(--quick)
else
  SIZE=sd21
  RDEIC=(--size sd21 --train-batch 4)
  CDC=(--size full --steps 1 17 65)
  CORRDIFF=(--size full --repeats 2)
  FOUNDATION=(--size sd21 --repeats 3)
  CONSISTENCY=()
fi
[ "$DEVICE" = cpu ] || CDC+=(--bf16)

# one random SD-shaped backbone for every step below (built once: the real size takes a while)
"$PY" -c "from modules.diffusion import save_random_sd; save_random_sd('$WORK/sd', 0, '$SIZE')"

REPORT="$WORK/report.md"
section() {  # section <title> <command...>: its output into the report, fenced
  local title="$1"
  shift
  echo "== $title" >&2
  {
    echo "### $title"
    echo
    echo '```'
    echo "\$ ${*#"$PY "}"
    if ! "$@" 2>"$WORK/stderr"; then
      echo "FAILED:"
      tail -n 5 "$WORK/stderr"
    fi
    echo '```'
    echo
  } >>"$REPORT"
}

section "RDEIC decoding and training steps" \
  "$PY" scripts/bench_rdeic.py "${RDEIC[@]}" --backbone-path "$WORK/sd" --device "$DEVICE"
section "CDC decoding" "$PY" scripts/bench_cdc.py "${CDC[@]}" --device "$DEVICE"
section "CorrDiff coding and γ searches" \
  "$PY" scripts/bench_corrdiff.py "${CORRDIFF[@]}" --device "$DEVICE"
section "Foundation codec against CDC" \
  "$PY" scripts/bench_foundation.py "${FOUNDATION[@]}" --backbone-path "$WORK/sd" --device "$DEVICE"
section "Bit-exactness and streams across devices" \
  "$PY" scripts/gpu_consistency.py "${CONSISTENCY[@]}" --backbone-path "$WORK/sd" \
  --device "$DEVICE"

GPU="$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')")"
VERSIONS="$("$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}')")"
echo "## GPU check: $GPU, device $DEVICE$([ "$QUICK" = 1 ] && echo ', --quick (tiny models)') — $VERSIONS"
echo
echo "\`bash scripts/gpu_check.sh$([ "$DEVICE" = cuda ] || echo " --device $DEVICE")$([ "$QUICK" = 1 ] && echo ' --quick')\`, $(date -u +%Y-%m-%d)"
echo
cat "$REPORT"
