#!/usr/bin/env bash
# bench/gpu_train.sh -- a few real RL steps on one GPU: a random-weight Qwen2.5-0.5B-shaped policy (bf16 compute,
# fp32 master weights, FSDP2), Qwen's BPE tokenizer and chat template, prepared arithmetic rows, 8k context.
# Prints t_sample / t_judge / t_train per step, tokens/s and peak GPU memory; writes $OUT/gpu_train.md.
#
#   bash bench/gpu_train.sh TOKENIZER_DIR [STEPS] [CRITIC_ROWS]
# TOKENIZER_DIR: a saved HF tokenizer (tests/conftest.py:qwen_tokenizer() builds Qwen's; save_pretrained it).
# CRITIC_ROWS: FAPO-Critic rows (../shared/data/fapo-critic-sample.jsonl): the same random model then judges them
# through genrm.py (the in-process judge's decode path), timed.
set -euo pipefail
cd "$(dirname "$0")/.."
TOK=${1:?tokenizer dir}; STEPS=${2:-2}; CRITIC=${3:-}; PROMPTS=${PROMPTS:-64}; RESP=${RESP:-512} WORK=${TMPDIR:-/tmp}/fapo_gpu_train; OUTDIR=${OUT:-$WORK}
rm -rf "$WORK"; mkdir -p "$WORK"
export PYTHONUNBUFFERED=1
python3 - "$TOK" "$WORK" <<'PY'
import json, sys, torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
tok_dir, work = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(tok_dir)
import os
tiny = os.environ.get("TINY") == "1"  # a CPU dry run of this script
cfg = Qwen2Config(vocab_size=151936, hidden_size=64 if tiny else 896, intermediate_size=128 if tiny else 4864,
                  num_hidden_layers=2 if tiny else 24, num_attention_heads=2 if tiny else 14, num_key_value_heads=1 if tiny else 2,
                  max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1e6,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
torch.manual_seed(0)
model = Qwen2ForCausalLM(cfg)
model.save_pretrained(f"{work}/policy"); tok.save_pretrained(f"{work}/policy")
with open(f"{work}/plain.jsonl", "w") as f:
    for a in range(2, 40):
        for b in range(3, 20):
            f.write(json.dumps({"problem": f"Compute {a} * {b} + {a + b}.", "answer": str(a * b + a + b)}) + "\n")
print("policy:", sum(p.numel() for p in model.parameters()) / 1e6, "M params")
PY
python3 data.py prepare "$WORK/plain.jsonl" "$WORK/train.jsonl" --source arith --split train > /dev/null
head -n 64 "$WORK/train.jsonl" > "$WORK/test.jsonl"
run() {  # name, extra flags
  local name=$1; shift
  python3 -m torch.distributed.run --nproc_per_node=1 train.py --model "$WORK/policy" --data "$WORK/train.jsonl" \
    --test-data "$WORK/test.jsonl" --steps "$STEPS" --prompts-per-step "$PROMPTS" --rollouts 8 --mini-batch-prompts $((PROMPTS / 2)) \
    --max-prompt-len 256 --max-response-len "$RESP" --overlong-buffer $((RESP / 4)) --eval-prompts 32 --eval-every 0 \
    --lr 1e-6 --grad-checkpointing --no-progress --debug --out "$WORK/$name" "$@" 2>&1 | grep -v "^config:" | tail -n 40
}
run baseline --genrm none
if [ -n "$CRITIC" ]; then  # the GenRM decode path on real critique prompts (~1-2k tokens each)
  ( time python3 genrm.py --model "$WORK/policy" --data "$CRITIC" --max-new-tokens 256 --limit 64 ) 2>&1 \
    | grep -E "F1 \(PB\)|avg response tokens|^real" | tee "$OUTDIR/gpu_genrm.txt"
fi
python3 - "$WORK" "$OUTDIR" "$PROMPTS" <<'PY'
import json, sys
work, out, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = ["| run | step | t_sample s | t_judge s | t_train s | response tokens | rollouts | gen tok/s | peak GiB |",
         "|---|---|---|---|---|---|---|---|---|"]
for name in ("baseline",):
    for m in (json.loads(l) for l in open(f"{work}/{name}/rl/metrics.jsonl")):
        if "eval" in m:
            continue
        toks = m["response_length"] * prompts * 8  # prompts x rollouts
        lines.append(f"| {name} | {m['step']} | {m['t_sample']:.1f} | {m['t_judge']:.1f} | {m['t_train']:.1f} | "
                     f"{m['response_length']:.0f} | {prompts * 8} | {toks / m['t_sample']:.0f} | {m.get('peak_gib', float('nan')):.1f} |")
print("\n".join(lines))
open(f"{out}/gpu_train.md", "w").write("\n".join(lines) + "\n")
PY
