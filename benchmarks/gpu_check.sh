#!/usr/bin/env bash
# Issue 16's GPU checks, in one run on a CUDA machine, from the repository root:
#   bash benchmarks/gpu_check.sh            (results into $OUT, or /tmp/gpu_check without it)
# Installs the carried wheels (.whl/, e.g. pydantic) when there are any, then: the device, the CUDA tests and the
# timm/torchvision and layout tests (pytest), and the GPU throughput benchmark (benchmarks/throughput_gpu.py).
# Each part is guarded by a timeout, so that one failure or hang does not stop the rest. About 3.5 minutes on an H200
# (pytest ~60 + ~20 s, throughput ~120 s); at most 90 + 40 + 160 s by the timeouts. Writes 5 files into $OUT.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; echo "wheels rc=$?"
fi
export PYTHONPATH=/tmp/site:$PWD/src
export HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
start=$(date +%s)
{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
  python3 -c "import timm, torchvision; print('timm', timm.__version__, 'torchvision', torchvision.__version__)"
  python3 -c "import pydantic; print('pydantic', pydantic.__version__)"
} 2>&1 | tee "$OUT/env.txt"

echo "== pytest: CUDA tests (test_teacher_forward.py, the fold check under TF32, host syncs), then layout and timm/torchvision"
timeout 90 python3 -m pytest -q -s -p no:cacheprovider -rfEs --durations=6 tests/test_teacher_forward.py \
  tests/test_fold.py::test_cuda_folding_is_accepted_under_tf32 tests/test_host_syncs.py \
  -k "not on_the_cpu_equals_eager" >"$OUT/pytest.txt" 2>&1
echo "pytest cuda rc=$? at $(( $(date +%s) - start )) s"
timeout 40 python3 -m pytest -q -p no:cacheprovider -rfEs --durations=4 tests/test_layout.py \
  tests/test_timm_torchvision.py >>"$OUT/pytest.txt" 2>&1
echo "pytest layout+timm rc=$? at $(( $(date +%s) - start )) s"
grep -E "passed|failed|error|SKIPPED|FAILED|Error" "$OUT/pytest.txt" | tail -n 30

echo "== throughput (GPU)"
timeout 160 python3 benchmarks/throughput_gpu.py --device cuda --steps 60 --rounds 5 --results "$OUT" >"$OUT/throughput_gpu.log" 2>&1
echo "throughput rc=$? at $(( $(date +%s) - start )) s"
tail -n 40 "$OUT/throughput_gpu.log" | grep -v "^|" | tail -n 20

echo "== done in $(( $(date +%s) - start )) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
echo "== summary"
if [ -f "$OUT/throughput_gpu.md" ]; then cat "$OUT/throughput_gpu.md"; else echo "no throughput_gpu.md (see throughput_gpu.log)"; fi
grep -E "passed|failed" "$OUT/pytest.txt" | tail -n 2
