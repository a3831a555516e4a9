#!/usr/bin/env bash
# Issue 14 item 5 on a CUDA machine: function matching against a fixed teacher (fix/rs) with a student as big as its
# teacher, 3 seeds, a short (100-epoch) and a 10x longer (1,000-epoch) schedule: the long schedule the shared CPUs
# could not run (benchmarks/results/function_matching_match.md). From the repository root:
#   bash benchmarks/gpu_function_matching.sh      (results into $OUT, or /tmp/gpu_fm without it)
# Needs Fashion-MNIST under $DISTILL_DATA (default .gpu_data/, holding fashion-mnist/*.gz) and the teacher checkpoint
# of function_matching_match.md in $FM_TEACHER (default .gpu_data/fm_teacher.pt). Installs the carried wheels
# (.whl/, e.g. pydantic) only where pydantic is missing. All runs go at once (one process each on the one GPU); a
# budget ($FM_BUDGET seconds) bounds the whole, and each run's validation curve comes back even when it was cut.
set -u
OUT=${OUT:-/tmp/gpu_fm}
SHORT=${FM_SHORT:-100} LONG=${FM_LONG:-1000} SEEDS=${FM_SEEDS:-3} BUDGET=${FM_BUDGET:-420}
RUNS=${FM_RUNS:-/tmp/fm_runs} # FM_NAME: the report's base name
mkdir -p "$OUT"
if ! python3 -c "import pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; echo "wheels rc=$?"
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export DISTILL_DATA=${DISTILL_DATA:-$PWD/.gpu_data} HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
start=$(date +%s)
(nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())") \
  2>&1 | tee "$OUT/fm_env.txt"
# GPU utilisation every 10 s while the runs go (a launch-bound step leaves the GPU mostly idle)
(while sleep 10; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) \
  >"$OUT/fm_gpu_util.txt" 2>&1 &
util=$!
timeout "$BUDGET" python3 benchmarks/function_matching.py \
  --config benchmarks/configs/function_matching_match_fmnist.yaml --modes fix/rs funmatch \
  --short "$SHORT" --long "$LONG" --seeds "$SEEDS" --workers $((4 * SEEDS)) --teacher "${FM_TEACHER:-$PWD/.gpu_data/fm_teacher.pt}" \
  --run-root "$RUNS" --results "$OUT" --out-name "${FM_NAME:-function_matching_gpu}" >"$OUT/fm.log" 2>&1
echo "function_matching rc=$? at $(( $(date +%s) - start )) s"
kill "$util" 2>/dev/null
# every run's curve and result in one archive (also those the budget cut; the checkpoints stay behind)
(cd "$RUNS" && tar czf "$OUT/fm_runs.tgz" */metrics.jsonl */results.json */test_predictions.npz 2>/dev/null)
tail -n 30 "$OUT/fm.log"
echo "== done in $(( $(date +%s) - start )) s"
