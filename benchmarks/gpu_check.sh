#!/usr/bin/env bash
# melalib's GPU check in one go (see benchmarks/gpu_check.py for what each section measures).
#   bash benchmarks/gpu_check.sh              # CUDA: <= 8 minutes; CPU-only: says so, dry run
#   bash benchmarks/gpu_check.sh --dry-run    # force the CPU dry run
# Extra arguments go to gpu_check.py (--backbone, --images DIR, --auc-band, --sections 1,2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MELALIB_PROGRESS=0 NO_ALBUMENTATIONS_UPDATE=1
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device on this machine; running the CPU dry run instead."
fi
# a hard stop at 8 minutes on CUDA (the dry run takes well under 3 on 2 cores)
exec timeout --signal=INT --kill-after=20 480 "$PYTHON" benchmarks/gpu_check.py "$@"
