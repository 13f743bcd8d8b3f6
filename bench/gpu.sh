#!/usr/bin/env bash
# The sampler's whole GPU measurement in one command, under 8 minutes on one H100 with torch.compile warm-up:
# random-weight Qwen2.5-0.5B and -1.5B shapes in bf16, batch 256 then 64, prompt 128 tokens, 256 new tokens;
# eager vs static vs compiled vs model.generate (bench/sampler.py), then the CUDA parity tests if time is left.
# Prints markdown tables; with $OUT set, also writes them to $OUT/gpu_bench.md (rewritten as results arrive,
# so a run cut short still leaves what it measured).
#
#   bash bench/gpu.sh
#   PRESETS=0.5b BATCHES="256" MAX_NEW=128 bash bench/gpu.sh     # every size is a variable below
#
# Each model run is capped (CAPS, seconds, in PRESETS order) and the whole script stops at BUDGET_S: a model
# that runs out of time loses its last cases, not the other model's. If torch.compile fails, the sampler warns
# and the "compiled" column reports the uncompiled static loop (the notes column says so).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PRESETS=${PRESETS:-"0.5b 1.5b"}
CAPS=${CAPS:-"230 190"}  # seconds per preset; time one leaves unused goes to the next
BATCHES=${BATCHES:-"256 64"}
PROMPT_LEN=${PROMPT_LEN:-128}
MAX_NEW=${MAX_NEW:-256}
G_PROMPT_LEN=${G_PROMPT_LEN:-1024}
BANDWIDTH=${BANDWIDTH:-3.35e12}  # bytes/s, H100 SXM HBM3
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu DTYPE=float32 PRESETS=toy ... dry-runs this script without a GPU
DTYPE=${DTYPE:-bfloat16}
BUDGET_S=${BUDGET_S:-455}  # the whole script, startup aside
export PYTHONUNBUFFERED=1
export TORCH_LOGS=${TORCH_LOGS:-recompiles,perf_hints}  # recompiles (tens of seconds each), CUDA graph skips
START=$(date +%s)
left() { echo $((START + BUDGET_S - $(date +%s))); }
TMP=$(mktemp -d)
MD=${OUT:+$OUT/gpu_bench.md}

collect() {  # the tables so far, on stdout and in $MD
    cat "$TMP"/*.md > "$TMP/all" 2>/dev/null || true
    [ -n "$MD" ] && cp "$TMP/all" "$MD"
}

set -x
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$PYTHON -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

i=0
saved=0
caps=($CAPS)
for preset in $PRESETS; do
    cap=$(( ${caps[$i]:-190} + saved ))
    i=$((i + 1))
    budget=$(left)
    [ "$budget" -lt "$cap" ] && cap=$budget
    if [ "$cap" -lt 60 ]; then
        echo "skipping $preset: ${cap}s left"
        continue
    fi
    t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$cap" $PYTHON bench/sampler.py --device "$DEVICE" --dtype "$DTYPE" \
        --preset "$preset" --batch $BATCHES --prompt-len "$PROMPT_LEN" --max-new "$MAX_NEW" \
        --g-prompt-len "$G_PROMPT_LEN" --bandwidth "$BANDWIDTH" --out "$TMP/$i-$preset.md"
    echo "exit status $? for $preset after $(( $(date +%s) - START ))s"
    saved=$(( cap - ($(date +%s) - t0) ))
    [ "$saved" -lt 0 ] && saved=0
    { echo; } >> "$TMP/$i-$preset.md"
    collect
done

budget=$(left)
if [ "$budget" -ge 45 ]; then
    if timeout --kill-after=5 "$budget" $PYTHON -m pytest -q -x tests/test_sampler.py -k cuda; then
        echo "CUDA parity tests (tests/test_sampler.py -k cuda): passed" > "$TMP/9-tests.md"
    else
        echo "CUDA parity tests (tests/test_sampler.py -k cuda): FAILED or cut short (exit $?)" > "$TMP/9-tests.md"
    fi
    collect
fi
{ set +x; } 2>/dev/null
echo
echo "==== sampler GPU benchmark ($(( $(date +%s) - START ))s) ===="
cat "$TMP/all"
