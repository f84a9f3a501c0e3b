#!/usr/bin/env bash
# The GPU check in one command (README "GPU check"): environment, the CUDA tests, the speed
# figures, host- vs device-side patch sampling, and a 5-minute training run, all into OUT_DIR;
# each step's exit status in OUT_DIR/summary.txt, exit 1 if any step failed.
#   scripts/gpu_check.sh OUT_DIR [--device cpu] [--quick] [--data DIR]
# --device cpu --quick is the dry run on a CPU (a few minutes on 2 cores). The steps are
# sr_ablate/bench/gpu_check.py; PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m sr_ablate.bench.gpu_check "$@"
