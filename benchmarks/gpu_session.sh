#!/usr/bin/env bash
# One device session: GPU tests and every benchmark on CUDA, logs under $OUT.
# Run from the repo root on the lent GPU machine (see benchmarks/README.md);
# carry .whl with the wheels the device image lacks (pot, netCDF4, cftime, ckatorch).
#   bash benchmarks/gpu_session.sh train   # ViLBERT training benchmark only (at most 600 s)
#   bash benchmarks/gpu_session.sh rest    # GPU tests and the other benchmarks (at most 245 s)
#   bash benchmarks/gpu_session.sh         # both (at most 845 s: more than one 600 s device call)
set -u
WHAT=${1:-all}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, transformers; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  echo "=== $name"; timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.txt" | tail -n 40
}
# eager rows take about a minute; compiling the step took 161 s on an H200, so the two
# compiled rows (default, and reduce-overhead = CUDA graphs) take about 5 minutes
[ "$WHAT" != rest ] && step train_cuda 420 python3 benchmarks/train.py --device cuda --rows eager,towers,compiled,cudagraphs --json "$OUT/train_cuda.json"
# can the host's CPU cores feed that step? (about 40 s; base config, 224-pixel images)
[ "$WHAT" != rest ] && step data_cpu 90 python3 benchmarks/data.py --workers 0,4,8,12 --cache --n-train 2048
# a larger batch: better GEMM efficiency, fewer launches and optimizer steps per pair
[ "$WHAT" != rest ] && step train_cuda_b256 90 python3 benchmarks/train.py --device cuda --batch-size 256 --rows eager --json "$OUT/train_cuda_b256.json"
[ "$WHAT" = train ] && exit 0
step pytest_gpu 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests
step metrics_cuda 80 python3 benchmarks/metrics.py --device cuda --sections single,grid,knn,each --knn-n 100000
step extract_cuda 45 python3 benchmarks/extract.py --device cuda --batches 20 --repeat 2
# scale_cuda: run separately when device time allows
# step scale_cuda 60 python3 benchmarks/scale.py --device cuda --timeout 25 --plot "$OUT/scale_cuda.png" --json "$OUT/scale_cuda.json"
