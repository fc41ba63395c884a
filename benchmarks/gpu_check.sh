#!/usr/bin/env bash
# The one prepared GPU check: tests on CUDA, then the throughput, memory, GPU-sharing and fast-mode numbers.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; about 8 minutes on one H100/H200
#
# Needs python3 with torch (CUDA), numpy, protobuf, pillow, opencv, pytest; no network, no installs.
# Everything goes to $OUT (default ./gpu_out): gpu_check.log (all output), one JSON per part and
# gpu_results.json (all of them merged). Parts run in order of importance, each under its own time limit,
# and a part that fails or times out does not stop the others; a part is skipped when the overall budget
# ($BUDGET seconds, default 500) would be exceeded.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d shared/golden ] && export REPRO_SHARED="$PWD/shared"
OUT="${OUT:-$PWD/gpu_out}"
BUDGET="${BUDGET:-500}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)

# part NAME LIMIT_S MIN_LEFT_S CMD...: run CMD under `timeout LIMIT_S` unless fewer than MIN_LEFT_S seconds
# of the budget remain; prints the exit code and the time taken.
part() {
  local name=$1 limit=$2 need=$3; shift 3
  local used=$(( $(date +%s) - T0 ))
  if (( BUDGET - used < need )); then
    echo "=== $name: SKIPPED ($used s used of $BUDGET)"; echo "{\"$name\": \"skipped\"}" > "$OUT/skip_$name.json"; return
  fi
  local left=$(( BUDGET - used ))
  (( limit > left )) && limit=$left
  echo "=== $name (limit ${limit}s, at ${used}s): $*"
  local t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  echo "=== $name: rc=$? in $(( $(date +%s) - t ))s"
}

echo "=== date $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY - <<'EOF' | tee "$OUT/env.json"
import json, os, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "cpus": os.cpu_count()}))
EOF

# 1. The main numbers: CaffeNet batch 256, 20480-image store, every variant (faithful, frozen n=5/7, TF32,
#    bf16 fast mode), loader alone / step alone / end to end, peak memory; and the tools' own run
#    (repro.train.run, faithful and fp32 numerics) against the matching step: ratio_tool_vs_engine*. ~3-4 minutes.
part throughput 300 120 $PY -m benchmarks.train_throughput --device cuda --tool-modes faithful,fp32 \
  --json "$OUT/throughput.json"

# 1b. Faithful mode's Caffe-order conv weight gradients (per-image im2col GEMMs) vs cuDNN's and vs the stacked
#     single-GEMM formulation, per CaffeNet layer at batch 256: where the faithful base net's time goes. ~30 s.
part conv_wgrad 90 30 $PY -m benchmarks.conv_wgrad --device cuda --json "$OUT/conv_wgrad.json"

# 1c. Where the faithful base net's step spends its GPU time, by category (conv fwd / dgrad / wgrad, LRN,
#     pooling, update, copies) and by layer. ~40 s.
part profile 90 40 $PY -m benchmarks.profile_step --device cuda --variant base_fp32 --iters 5 \
  --json "$OUT/profile_base_fp32.json"

# 2. Correctness on the GPU: every gpu-marked test (fast path, DDP over NCCL, ...) and Caffe's golden G1/G1b
#    on CUDA (the tests pick the CUDA device by parametrisation).
part tests_gpu 150 60 $PY -m pytest -q -m gpu tests/ --continue-on-collection-errors -p no:cacheprovider \
  --junitxml="$OUT/tests_gpu.xml"
part golden_cuda 90 30 $PY -m pytest -q tests/test_golden_g1.py -k cuda -p no:cacheprovider -s \
  --junitxml="$OUT/golden_cuda.xml"

# 3. Fast mode learns what faithful mode learns: the small net on the built-in data, 2000 iterations,
#    2 seeds x {faithful, fast}.
part equivalence 150 60 $PY -m benchmarks.fast_equivalence --device cuda --iters 2000 --seeds 1,2 \
  --json "$OUT/equivalence.json"

# 4. Several small study nets on one GPU: 1 vs 4 concurrent processes, peak memory each.
part share_gpu 110 60 $PY -m benchmarks.share_gpu --device cuda --procs 1,4 --seconds 6 --startup 25 \
  --json "$OUT/share_gpu.json"

# 5. torch.compile'd fast mode (optional: only if it compiles within the time left).
part compile 150 90 $PY -m benchmarks.train_throughput --device cuda --variants base_compile,frozen5_compile \
  --sections step,e2e --json "$OUT/throughput_compile.json"

$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
merged = {}
for p in sorted(out.glob("*.json")):
    if p.name == "gpu_results.json":
        continue
    try:
        merged[p.stem] = json.loads(p.read_text())
    except ValueError as e:
        merged[p.stem] = {"unreadable": str(e)}
(out / "gpu_results.json").write_text(json.dumps(merged, indent=1) + "\n")
print("wrote", out / "gpu_results.json", "with", sorted(merged))
EOF
echo "=== done in $(( $(date +%s) - T0 ))s"
