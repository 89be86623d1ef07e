#!/usr/bin/env bash
# The accelerator measurements the README publishes, by value: the step time, then the
# time to accuracy, then the reproduction table; each part capped, all under a deadline.
#
#   bash benchmarks/device_check.sh OUT [PART...]
#
# On the shared H200 (at most 10 minutes per command, 15 minutes of device time in all,
# the machine's start included) as two calls, the second right after the first:
#
#   PYTHONPATH=. bash benchmarks/device_check.sh $OUT \
#     step_mnist step_svhn step_resnet50 tta  # <= 470 s
#   PYTHONPATH=. bash benchmarks/device_check.sh $OUT reproduce host_input  # <= 350 s
#
# PARTs (default: all of them, in this order); expected and capped seconds on the H200:
#   step_mnist    155 / 170  benchmarks.step_time, MNIST model, 64 then 1024 images per
#                            domain, every implementation, 10 repeats of 50 steps
#   step_svhn     120 / 130  the same for the SVHN model at 1024 then 64, without the pmap,
#                            no-diagnostics and CUDA-graphs rows
#   step_resnet50  50 /  60  the office recipe's ResNet-50 model at 224 x 224, 32 + 32
#                            images: dann_jax jit (fp32 and bf16) against torchvision's model
#                            in PyTorch eager (fp32 and bf16 autocast), 5 repeats of 10 steps
#   tta            70 /  80  benchmarks.time_to_accuracy, improved recipe then the paper's
#                            (parts tta_improved and tta_paper, 40 s cap each)
#   reproduce     280 / 300  experiments/reproduce.py: MNIST -> MNIST-M, MNIST -> USPS,
#                            USPS -> MNIST; DANN, then source only, then oracle cells; paper
#                            and improved recipes; 3 seeds (vmapped) x 12,000 steps
#   host_input     15 /  20  benchmarks.host_input: the host-fed input path's images/s against
#                            the MNIST model's consumption, resident and host-fed (--input)
# (The expected times are estimates: no part has been timed on the H200 yet.) A part may
# use what earlier parts left of the deadline, never what the later parts need.
#
# Environment: DATA_DIR (default .devdata: mnist/, mnist_m/, usps/ as upstream files),
# PAIRS (reproduce's pairs, default mnist:mnist_m,mnist:usps,usps:mnist), PLATFORM (the
# JAX platform the preflight insists on, default gpu), DEADLINE_S (default: 30 s of
# preflight plus the caps of the parts asked for), CAP_<part> (one part's cap, seconds),
# PYTHON (default python3), and REPRODUCE_ARGS, TTA_ARGS, STEP_ARGS, RESNET_ARGS, HOST_ARGS
# appended to
# the parts' commands (later flags win: the CPU test shrinks every part with them).
#
# Writes to OUT: env.txt (the preflight), log.txt (everything), and per part
# step_mnist.json, step_svhn.json, step_resnet50.json, tta_improved.json, tta_paper.json,
# host_input.json, table.json and
# table.md; each JSON is complete on its own (a part cut short says so inside it).
# The preflight (imports, a computation on the device, the data) runs first and stops
# everything at once (exit 3) when it fails. Run from the repository root.
set -uo pipefail
out="${1:?usage: bash benchmarks/device_check.sh OUT [PART...]}"
shift
requested=("$@")
all_parts=(step_mnist step_svhn step_resnet50 tta reproduce host_input)
[ "${#requested[@]}" -gt 0 ] || requested=("${all_parts[@]}")
data="${DATA_DIR:-.devdata}"
pairs="${PAIRS:-mnist:mnist_m,mnist:usps,usps:mnist}"
py="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
log="$out/log.txt"
start=$SECONDS

# Expected and capped seconds of each part (see the header).
declare -A expect=([step_mnist]=155 [step_svhn]=120 [step_resnet50]=50 [tta_improved]=35
  [tta_paper]=35 [reproduce]=280 [host_input]=15)
declare -A cap=([step_mnist]=170 [step_svhn]=130 [step_resnet50]=60 [tta_improved]=40
  [tta_paper]=40 [reproduce]=300 [host_input]=20)
parts=()
domains=()
for part in "${requested[@]}"; do
  case "$part" in
    step_mnist | step_svhn | step_resnet50 | reproduce | host_input) parts+=("$part") ;;
    tta) parts+=(tta_improved tta_paper) ;;
    *) echo "unknown part $part (${all_parts[*]})" |
      tee -a "$log"; exit 2 ;;
  esac
  case "$part" in
    tta) domains+=(mnist mnist_m) ;;
    reproduce) domains+=($(tr ',:' '\n\n' <<<"$pairs")) ;;
  esac
done
planned=30
for part in "${parts[@]}"; do
  override="CAP_$part"
  cap[$part]="${!override:-${cap[$part]}}"
  planned=$((planned + cap[$part]))
done
deadline="${DEADLINE_S:-$planned}"
domains=($(printf '%s\n' "${domains[@]}" | sort -u))

{
  date -u
  timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv 2>&1
  timeout 120 "$py" -m benchmarks.preflight --platform "${PLATFORM:-gpu}" --data-dir "$data" \
    --domains "${domains[@]}" 2>&1
} >"$out/env.txt"
preflight=$?
tee -a "$log" <"$out/env.txt"
if [ "$preflight" -ne 0 ]; then
  echo "== preflight failed (exit $preflight): nothing run" | tee -a "$log"
  exit 3
fi
echo "== plan: ${parts[*]}; deadline $deadline s" | tee -a "$log"
work="$(mktemp -d)" # the table's cells (checkpoints, metrics): not for OUT
trap 'rm -rf "$work"' EXIT

# run PART COMMAND...: run PART until the deadline less the caps of the parts after it,
# i.e. for its own cap plus whatever the earlier parts left unused.
run() {
  local name="$1" reserve=0 later=0 p
  shift
  for p in "${parts[@]}"; do
    [ "$later" -eq 1 ] && reserve=$((reserve + cap[$p]))
    [ "$p" = "$name" ] && later=1
  done
  local limit=$((deadline - (SECONDS - start) - reserve))
  if [ "$limit" -lt 20 ]; then
    echo "== $name: SKIPPED (${limit} s of the ${deadline} s deadline left for it)" |
      tee -a "$log"
    return
  fi
  echo "== $name (at $((SECONDS - start)) s; expected ~${expect[$name]} s, limit $limit s): $*" |
    tee -a "$log"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$log"
}

for part in "${parts[@]}"; do
  case "$part" in
    step_mnist)
      run "$part" "$py" -m benchmarks.step_time --archs mnist --batch-sizes 64 1024 \
        --repeats 10 --out "$out/$part.json" ${STEP_ARGS:-}
      ;;
    step_svhn)
      run "$part" "$py" -m benchmarks.step_time --archs svhn --batch-sizes 1024 64 \
        --repeats 10 --impls jit steps jit_bf16 handwritten handwritten_bf16 torch_eager \
        torch_bf16 torch_compile --out "$out/$part.json" ${STEP_ARGS:-}
      ;;
    step_resnet50)
      run "$part" "$py" -m benchmarks.step_time --archs resnet50 --batch-sizes 32 \
        --repeats 5 --steps-per-call 10 --impls jit jit_bf16 torch_eager torch_bf16 \
        --out "$out/$part.json" ${STEP_ARGS:-} ${RESNET_ARGS:-}
      ;;
    tta_improved | tta_paper)
      run "$part" "$py" -m benchmarks.time_to_accuracy --data-dir "$data" \
        --recipe "${part#tta_}" --out "$out/$part.json" ${TTA_ARGS:-}
      ;;
    host_input)
      run "$part" "$py" -m benchmarks.host_input --out "$out/$part.json" ${HOST_ARGS:-}
      ;;
    reproduce)
      # Evaluation (and so the checkpoint) only at the last step, 1000 steps per dispatch:
      # the table needs the last-step accuracy only.
      run reproduce "$py" experiments/reproduce.py --data-dir "$data" --pairs "$pairs" \
        --modes dann,source_only,target_only --recipes paper,improved --steps 12000 \
        --seeds 3 --eval-every 12000 --steps-per-call 1000 --out "$work/table" \
        ${REPRODUCE_ARGS:-}
      cp "$work/table/table.md" "$work/table/table.json" "$out/" 2>/dev/null
      ;;
  esac
done
echo "== done in $((SECONDS - start)) s" | tee -a "$log"
# The results, for a caller that sees only the end of the output.
cat "$out/table.md" 2>/dev/null
grep -hE '^(== tta_[a-z]+ \(|time to |reached|did not reach)' "$log"
grep -hE '^(arch |mnist |svhn |resnet)' "$log"
exit 0
