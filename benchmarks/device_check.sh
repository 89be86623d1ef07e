#!/usr/bin/env bash
# Every accelerator measurement the README publishes, in one command with a deadline.
#
#   bash benchmarks/device_check.sh OUT [PART...]
#
# PARTs, run in the order given (default: all four, most important first):
#   reproduce   experiments/reproduce.py: MNIST -> MNIST-M / USPS, USPS -> MNIST, source
#               only / DANN / oracle, paper and improved recipes, 3 seeds x 12000 steps
#   tta         benchmarks/time_to_accuracy.py with the paper and the improved recipe
#   step_mnist  benchmarks/step_time.py --archs mnist (64, 256, 1024 images per domain)
#   step_svhn   benchmarks/step_time.py --archs svhn
#
# Environment: DATA_DIR (default .devdata, the digits in their upstream formats),
# DEADLINE_S (default 560: a part that would start later is skipped, a running part is
# stopped there), PYTHON (default python3); REPRODUCE_ARGS, TTA_ARGS, STEP_ARGS are
# appended to the parts' commands (later flags win: the CPU smoke test shrinks the runs
# with them). Writes at most eight files to OUT: log.txt,
# table.md, table.json, tta_paper.json, tta_improved.json, step_mnist.json,
# step_svhn.json, env.txt. Each part's JSON is also complete on its own when a later part
# fails. Run from the repository root; nothing needs installing beyond JAX, flax, optax,
# orbax-checkpoint, h5py, pillow (and PyTorch for the PyTorch rows).
set -uo pipefail
out="${1:?usage: bash benchmarks/device_check.sh OUT [PART...]}"
shift
parts=("$@")
[ "${#parts[@]}" -gt 0 ] || parts=(reproduce tta step_mnist step_svhn)
data="${DATA_DIR:-.devdata}"
deadline="${DEADLINE_S:-560}"
py="${PYTHON:-python3}"
mkdir -p "$out"
work="$(mktemp -d)"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
log="$out/log.txt"
start=$SECONDS

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$py" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, jax.devices())' 2>&1 | tail -n 1
  "$py" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' 2>&1 |
    tail -n 1
} >"$out/env.txt"
cat "$out/env.txt" >>"$log"

# run PART_NAME CAP_S COMMAND...: run with a timeout of min(CAP_S, time left).
run() {
  local name="$1" cap="$2"
  shift 2
  local left=$((deadline - (SECONDS - start)))
  if [ "$left" -lt 20 ]; then
    echo "== $name: SKIPPED (deadline ${deadline} s reached)" | tee -a "$log"
    return
  fi
  [ "$cap" -lt "$left" ] || cap="$left"
  echo "== $name (at $((SECONDS - start)) s, limit $cap s): $*" | tee -a "$log"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$cap" "$@" >>"$log" 2>&1
  echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$log"
}

for part in "${parts[@]}"; do
  case "$part" in
    reproduce)
      run reproduce 400 "$py" experiments/reproduce.py --data-dir "$data" \
        --recipes paper,improved --out "$work/table" ${REPRODUCE_ARGS:-}
      cp "$work/table/table.md" "$work/table/table.json" "$out/" 2>/dev/null
      ;;
    tta)
      for recipe in paper improved; do
        run "tta_$recipe" 90 "$py" benchmarks/time_to_accuracy.py --data-dir "$data" \
          --recipe "$recipe" --out "$out/tta_$recipe.json" ${TTA_ARGS:-}
      done
      ;;
    step_mnist | step_svhn)
      run "$part" 300 "$py" benchmarks/step_time.py --archs "${part#step_}" \
        --out "$out/$part.json" ${STEP_ARGS:-}
      ;;
    *) echo "unknown part $part (reproduce, tta, step_mnist, step_svhn)" | tee -a "$log" ;;
  esac
done
echo "== done in $((SECONDS - start)) s" | tee -a "$log"
# The results, for a caller that sees only the end of the output.
cat "$out/table.md" 2>/dev/null
grep -hE '^(== tta_[a-z]+ \(|time to |reached|did not reach)' "$log"
grep -hE '^(arch |mnist |svhn )' "$log"
