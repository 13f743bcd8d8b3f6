"""bench/shared_prompt.py -- one GRPO update with each prompt forwarded once for its group (logprobs.collate_shared: the
responses attend to its KV cache) against one forward of prompt + response per rollout, on the same samples.

The samples are bench/realmodel.py's work: P arith prompts (--arith-level small, no system prompt) through the
model's chat template, G responses each (the worked solution's tokens, so every rollout has the real length), random
+-1 advantages. Each side runs `grpo.policy_update` on its own copy of the model; the script prints seconds per update
(the median of --repeats), tokens through the update per second, and how far the two updated models are apart.

    python bench/shared_prompt.py --model OUT/start/sft/hf          # bench/realmodel.py's start
    OMP_NUM_THREADS=1 python bench/shared_prompt.py --model DIR
"""
import argparse
import copy
import os
import random
import statistics
import sys
import time

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import arith  # noqa: E402
import data  # noqa: E402
import grpo  # noqa: E402
from infra.fsdp import World  # noqa: E402


def samples(tok, prompts, rollouts, seed):
    """(samples, prompt tokens, response tokens): G worked solutions per prompt, advantages +-1."""
    rng, out = random.Random(seed), []
    for _ in range(prompts):
        prompt, solution = arith.sft_example(rng, 0.0, "small")
        ids = data.encode_prompt(tok, prompt, system="none")
        response = tok(solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out += [grpo.Sample(ids, response, rng.choice([-1.0, 1.0])) for _ in range(rollouts)]
    return out, sum(len(s.prompt) for s in out), sum(len(s.response) for s in out)


def timed_update(model, batch, share, repeats, world):
    times, m = [], None
    for _ in range(repeats):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        settings = grpo.UpdateSettings(pad_id=0, micro_batch=16, share_prompts=share)
        t = time.perf_counter()
        grpo.policy_update(m, opt, batch, settings, world)
        times.append(time.perf_counter() - t)
    return statistics.median(times), m


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench/shared_prompt.py", description=__doc__.split("\n\n")[0].split("-- ")[1])
    ap.add_argument("--model", required=True, help="an HF model dir (bench/realmodel.py's OUT/start/sft/hf)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    batch, prompt_tokens, response_tokens = samples(tok, args.prompts, args.rollouts, seed=0)
    print(f"{args.prompts} prompts x {args.rollouts} rollouts: {prompt_tokens / len(batch):.1f} prompt and "
          f"{response_tokens / len(batch):.1f} response tokens a rollout; {torch.get_num_threads()} thread(s)")
    world = World()  # a world of one, as `python train.py` runs
    naive_s, naive = timed_update(model, batch, False, args.repeats, world)
    shared_s, shared = timed_update(model, batch, True, args.repeats, world)
    diff = max((a - b).abs().max().item() for a, b in zip(naive.parameters(), shared.parameters()))
    for name, s, tokens in (("one forward per rollout", naive_s, prompt_tokens + response_tokens),
                            ("each prompt once (shared)", shared_s, prompt_tokens // args.rollouts + response_tokens)):
        print(f"{name:27s} {s:6.2f} s/update  {tokens:6d} tokens through the model  {tokens / s:7.0f} tokens/s")
    print(f"shared is {naive_s / shared_s:.2f}x faster; the updated weights differ by at most {diff:.2e}")


if __name__ == "__main__":
    main()
