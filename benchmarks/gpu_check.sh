#!/usr/bin/env bash
# GPU sanity check of ppo_step on a ~0.5B Gemma-2 in bf16: three variants, about 5 minutes in all.
#
#   bash benchmarks/gpu_check.sh            # full fine-tune; LoRA; LoRA + gradient checkpointing
#   bash benchmarks/gpu_check.sh --quant    # also QLoRA (4-bit base): needs the `quant` extra
#                                           # (bitsandbytes) installed, i.e. `uv sync --extra quant`
#   bash benchmarks/gpu_check.sh --tiny --device cpu   # the CPU smoke test of the same code path
#
# Other arguments go to every benchmarks/gpu_check.py run. Exits non-zero, with a message, when no
# CUDA device is visible (unless --device cpu is given) or when any variant fails or times out.
set -euo pipefail
cd "$(dirname "$0")/.."

quant=0
args=()
for a in "$@"; do
  if [[ "$a" == "--quant" ]]; then quant=1; else args+=("$a"); fi
done

# Which Python runs the checks: uv's project environment by default. PPOLAB_PYTHON overrides it,
# for a GPU image that has torch and transformers preinstalled and no network (PPOLAB_PYTHON=python3).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # `import ppolab` from this checkout either way
if [[ -n "${PPOLAB_PYTHON:-}" ]]; then read -ra py <<<"$PPOLAB_PYTHON"; pyq=("${py[@]}")
elif command -v uv >/dev/null; then py=(uv run python); pyq=(uv run --extra quant python)
else py=(python3); pyq=(python3); fi

cpu=0
for a in "${args[@]+"${args[@]}"}"; do [[ "$a" == "cpu" || "$a" == "--device=cpu" ]] && cpu=1; done
if [[ $cpu == 0 ]] && ! "${py[@]}" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check.sh: no CUDA device is visible to torch; this check needs an NVIDIA GPU." >&2
  echo "  (To exercise the code path on a CPU: bash benchmarks/gpu_check.sh --tiny --device cpu)" >&2
  exit 2
fi
[[ $cpu == 0 ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# Per-variant wall limits keep the whole script under ~5 minutes; gpu_check.py also stops starting
# new steps after --time-budget seconds.
run() {
  local limit=$1; shift
  echo "=== gpu_check.py $* ===" >&2
  timeout "$limit" "${py[@]}" benchmarks/gpu_check.py --time-budget $((limit - 30)) "$@" "${args[@]+"${args[@]}"}"
}

status=0
run 100 || status=$?
run 90 --lora || status=$?
run 90 --lora --gradient-checkpointing || status=$?
if [[ $quant == 1 ]]; then
  # --extra quant makes uv install bitsandbytes if it is not yet in the environment.
  echo "=== gpu_check.py --4bit --gradient-checkpointing ===" >&2
  timeout 100 "${pyq[@]}" benchmarks/gpu_check.py --time-budget 70 --4bit --gradient-checkpointing \
    "${args[@]+"${args[@]}"}" || status=$?
fi
exit "$status"
