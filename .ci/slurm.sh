#!/usr/bin/env bash
# Start the one-node SLURM cluster (Debian slurm-wlm + munge) and run the SLURM test:
# the tiny workflow through `--executor slurm` must equal a local run.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=../shared/peers/slurm/start_slurm.sh
if [ ! -f "$RECIPE" ]; then
  echo "SLURM recipe $RECIPE is missing: cannot start the CI cluster" >&2
  exit 1
fi
bash "$RECIPE"
trap 'bash "$RECIPE" stop || true' EXIT
sinfo
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -m pytest -m slurm -p no:cacheprovider tests/test_slurm.py -v
