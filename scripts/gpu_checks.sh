#!/usr/bin/env bash
# Every check that needs a CUDA GPU, as one script (a few minutes on an H100). On CPU-only machines
# the CUDA tests are skipped, so this is where they run. From the repository root, after
# `pip install -e ".[test]"` with a CUDA build of torch:
#     bash scripts/gpu_checks.sh
# 1. CUDA tests: a CUDA-graph-replayed update equals the eager loop bit for bit and really replays
#    (tests/test_train.py, tests/test_batched.py); the fused optimiser equals torch.optim's fused path
#    on CUDA (tests/test_optim.py);
# 2. the sweep tests with the GPU as the default device (tests/test_sweeps.py);
# 3. bench_batched on the GPU: 32 and 128 MLPs, 32 CNNs, one at a time vs batched, eager vs graphs.
# Exit status: non-zero if any part failed (every part runs).
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
status=0
python -m pytest -q -rs tests/test_train.py tests/test_batched.py tests/test_optim.py -k cuda || status=1
python -m pytest -q tests/test_sweeps.py || status=1
python scripts/bench_batched.py --device cuda --steps 1000 --eval-every 250 --cases mlp32,mlp128,cnn32 --repeats 1 \
    --side-by-side '' || status=1
exit $status
