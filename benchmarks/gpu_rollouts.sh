#!/usr/bin/env bash
# Rollout speed on one GPU: eager loop vs static engine (CUDA graph) vs generate(), and ppo_step per
# phase, for random-weight 0.5B Gemma-2 (full, LoRA) and Gemma 3 270M at batch 16, 64, 256.
# One run, under ~8 minutes on an H200 (benchmarks/gpu_rollouts.py stops starting measurements
# after --time-budget, 420 s here, and the whole run is killed at 470 s).
#
#   bash benchmarks/gpu_rollouts.sh                         # JSON on stdout's last line
#   bash benchmarks/gpu_rollouts.sh --out "$OUT/gpu_rollouts.json"
#   bash benchmarks/gpu_rollouts.sh --tiny --device cpu --batches 2,4 --new-tokens 8 --ppo-batch 4
#                                                           # the CPU smoke test of the same code
#
# Python: uv's project environment by default; PPOLAB_PYTHON overrides it (a GPU image with torch,
# transformers and peft preinstalled and no network: PPOLAB_PYTHON=python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ -n "${PPOLAB_PYTHON:-}" ]]; then read -ra py <<<"$PPOLAB_PYTHON"
elif command -v uv >/dev/null; then py=(uv run python)
else py=(python3); fi

cpu=0
for a in "$@"; do [[ "$a" == "cpu" || "$a" == "--device=cpu" ]] && cpu=1; done
if [[ $cpu == 0 ]]; then
  if ! "${py[@]}" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_rollouts.sh: no CUDA device is visible to torch (CPU path: --tiny --device cpu)" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi
exec timeout 470 "${py[@]}" benchmarks/gpu_rollouts.py --time-budget 420 "$@"
