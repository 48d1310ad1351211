# The GPU checks as run on a CUDA machine from the repo root, with deepinv and natsort carried
# as wheels in .whl/ (that machine has torch but not them); results go to $OUT.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
timeout 240 python3 benchmarks/gpu/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
timeout 120 python3 benchmarks/gpu/gpu_check.py --phases --out "$OUT"
timeout 120 python3 benchmarks/bench_operators.py --device cuda 2>&1 | tee "$OUT/operators_cuda.log"
cp benchmarks/results/operators.json "$OUT/operators_cuda.json"
timeout 150 python3 -c 'import sys; from metaprior.cli import main; sys.argv = ["metaprior",
  "demo", "--device", "cuda", "--out", "/tmp/demo"]; main()' 2>&1 | tail -8 | tee "$OUT/demo.log"
