"""bench/gpu_parity.py -- greedy parity of sampler.generate's fast loops with its eager loop, counted, and the
bf16 mismatches explained (bench/gpu_all.sh runs it after the CUDA parity tests).

    python bench/gpu_parity.py --device cuda --out T.md      # Qwen2.5-0.5B widths, 4 layers (compile time)
    python bench/gpu_parity.py --shape tiny --batch 8 --prompt-len 8 --max-new 12 --train-steps 40   # CPU dry run

Cases, on one model object (so the compiled step compiles once per dtype, not once per case):
  fp32, random init          the loops should agree exactly (different kernels, same fp32 arithmetic order
                             up to reductions; a flip needs a tie within ~1e-6)
  fp32, trained              the same weights after --train-steps of AdamW on a deterministic task
  bf16, trained              cast to bf16: the trained model's logits have a real margin (its next token is
                             determined), so bf16 rounding should flip nothing
  bf16, random init          the random weights back, in bf16: logits of a random model over 151,936 tokens are
                             close to uniform, the top two are often within bf16's rounding of each other, and
                             kernels that round differently (static cache, compiled, padded) pick differently
  bf16, random, logits x8    the final norm's weight scaled by 8, i.e. every logit x8 (a scaled-up LM head: the
                             head is tied to the embedding, so it is scaled through the norm). The softmax is
                             peaked, but the top-2 gap and the rounding error scale together, so this is expected
                             NOT to remove the flips: only a real margin does (the trained case)
The task (trained cases): a fixed random permutation f of --task-tokens token ids; sequences follow
x[t+1] = f(x[t]); prompts are such chains, so greedy decoding continues the chain. Every case reports rows
identical to eager, the mean step of the first divergence, the largest logprob difference on identical rows,
and, from one full forward over eager's tokens, the top-1 minus top-2 logit gap at every step and at each
row's first divergence (the gap between eager's and the other loop's pick): small gaps at divergence = near-ties.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sampler  # noqa: E402
from infra import fastdecode  # noqa: E402

SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "0.5b-4l": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=4, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096),
}
FAST = {"static": "static", "compiled": "compile"}


def build(shape, device):
    config = transformers.Qwen2Config(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=4096,
                                      eos_token_id=None, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model.eval().generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def chain_task(vocab, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randperm(vocab - 16, generator=g)[:k] + 16  # (k,) ids >= 16
    f = torch.zeros(vocab, dtype=torch.long)
    f[tokens] = tokens[torch.randperm(k, generator=g)]
    return tokens, f


def chains(tokens, f, n, length, seed):
    g = torch.Generator().manual_seed(seed)
    x = [tokens[torch.randint(0, tokens.numel(), (n,), generator=g)]]
    for _ in range(length - 1):
        x.append(f[x[-1]])
    return torch.stack(x, 1)  # (n, length)


def train(model, tokens, f, steps, lr, batch, length, device):
    """AdamW on next-token cross-entropy over chains; returns the last loss."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        x = chains(tokens, f, batch, length, seed=1000 + step).to(device)
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    del opt
    return float(loss.detach())


def decode(loop, model, prompts, max_new):
    """[(tokens, logprobs or None)] per row, greedy."""
    if loop == "generate":
        ids = torch.tensor(prompts, device=model.device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=None, pad_token_id=0, top_k=None, top_p=None)
        return [(row, None) for row in out[:, ids.size(1):].tolist()]
    outs = sampler.generate(model, prompts, max_new, temperature=0, fast=FAST.get(loop, False))
    return [(c.tokens, c.logprobs) for c in outs]


@torch.no_grad()
def gaps(model, prompts, ref, queries, rows_per_chunk=8):
    """One full forward over prompt + eager's tokens -> (top-1 minus top-2 logit gap at every step (R, K),
    {(row, step, a, b): logit[a] - logit[b]} for the queried divergences)."""
    P = len(prompts[0])
    seqs = torch.tensor([p + t for p, (t, _) in zip(prompts, ref)], device=model.device)  # (R, P + K)
    top2, found = [], {}
    for s in range(0, seqs.size(0), rows_per_chunk):
        logits = model(input_ids=seqs[s:s + rows_per_chunk, :-1]).logits[:, P - 1:].float()  # (r, K, V)
        v = logits.topk(2, dim=-1).values
        top2.append((v[..., 0] - v[..., 1]).cpu())
        for q in queries:
            row, step, a, b = q
            if s <= row < s + rows_per_chunk:
                found[q] = float(logits[row - s, step, a] - logits[row - s, step, b])
    return torch.cat(top2), found


def compare(ref, out):
    """rows identical, first divergence step per row (None: identical), max |dlogprob| on identical rows."""
    same, firsts, dlp = 0, [], 0.0
    for (a, la), (b, lb) in zip(ref, out):
        if a == b:
            same += 1
            firsts.append(None)
            if la is not None and lb is not None and a:
                dlp = max(dlp, max(abs(x - y) for x, y in zip(la, lb)))
        else:
            firsts.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    return same, firsts, dlp


def fmt(x, d=3):
    return "-" if x is None or x != x else f"{x:.{d}f}"


class Report:
    def __init__(self, path, title):
        self.path, self.title, self.rows, self.notes = path, title, [], []

    def text(self):
        return "\n".join([self.title, "", "| case | loop | rows identical to eager | mean first divergence step "
                          "(diverging rows) | max abs logprob diff, identical rows | top-1 minus top-2 logit gap, "
                          "median over all steps | gap between the two picks at the divergences: median / max | "
                          "share of all steps with a top-2 gap <= that max |",
                          "|---|---|---|---|---|---|---|---|"] + self.rows + [""] + self.notes) + "\n"

    def save(self):
        if self.path:
            with open(self.path, "w") as f:
                f.write(self.text())


def run_case(name, model, prompts, args, report, extra=""):
    t0 = time.perf_counter()
    ref = decode("eager", model, prompts, args.max_new)
    outs = {}
    for loop in [loop for loop in args.loops if loop != "eager"]:
        try:
            outs[loop] = decode(loop, model, prompts, args.max_new)
        except Exception as error:  # noqa: BLE001 -- a row saying so, then the other loops
            outs[loop] = f"FAILED: {type(error).__name__}: {str(error)[:100]}"
    compared = {loop: compare(ref, out) for loop, out in outs.items() if not isinstance(out, str)}
    queries = {(i, k, ref[i][0][k], outs[loop][i][0][k]) for loop, (_, firsts, _) in compared.items()
               for i, k in enumerate(firsts) if k is not None and k < min(len(ref[i][0]), len(outs[loop][i][0]))}
    top2, found = gaps(model, prompts, ref, sorted(queries))
    med_all = float(top2.median())
    for loop, out in outs.items():
        if isinstance(out, str):
            report.rows.append(f"| {name} | {loop} | {out} | | | | | |")
            continue
        note = ""
        if loop == "compiled":
            state = fastdecode.FAST_STATES.get(model)
            note = " (COMPILE FAILED: ran uncompiled)" if state is not None and state.step_fn is None else ""
        same, firsts, dlp = compare(ref, out)
        div = [(i, k) for i, k in enumerate(firsts) if k is not None]
        d = sorted(abs(found[q]) for q in ((i, k, ref[i][0][k], out[i][0][k]) for i, k in div) if q in found)
        dmax = d[-1] if d else float("nan")
        share = float((top2 <= dmax).float().mean()) if d else float("nan")
        mean_first = sum(k for _, k in div) / len(div) if div else float("nan")
        report.rows.append(
            f"| {name} | {loop}{note} | {same} / {len(ref)} | {fmt(mean_first, 1)} | "
            f"{fmt(dlp, 5) if loop != 'generate' else '-'} | {fmt(med_all)} | "
            f"{fmt(statistics.median(d) if d else float('nan'))} / {fmt(dmax)} | {fmt(share, 4)} |")
        print(report.rows[-1], flush=True)
    if extra:
        report.notes.append(f"- {name}: {extra}")
    print(f"  {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    report.save()
    return ref


def follow_rate(ref, prompts, f):
    """Share of greedy tokens that continue the chain (t[k+1] = f(t[k])): how well the task was learned."""
    hit = n = 0
    for p, (t, _) in zip(prompts, ref):
        seq = p + t
        for k in range(len(p), len(seq)):
            hit += int(f[seq[k - 1]]) == seq[k]
            n += 1
    return hit / max(n, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default=None, choices=sorted(SHAPES), help="default: 0.5b-4l on CUDA, tiny on the CPU")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--loops", nargs="+", default=None, help="default: static compiled generate on CUDA, "
                                                             "static generate on the CPU (eager is the reference)")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--task-tokens", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    args.shape = args.shape or ("0.5b-4l" if cuda else "tiny")
    args.loops = args.loops or (["static", "compiled", "generate"] if cuda else ["static", "generate"])
    started = time.perf_counter()
    model = build(args.shape, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if cuda else "CPU"
    report = Report(args.out, f"### Greedy parity: sampler loops vs the eager loop, {args.shape} shape "
                    f"({n_params / 1e6:.1f}M params, vocab {model.config.vocab_size}) on {name}\n\n"
                    f"batch {args.batch}, prompts of {args.prompt_len} tokens, {args.max_new} new tokens, greedy; "
                    f"torch {torch.__version__}, transformers {transformers.__version__}")
    tokens, f = chain_task(model.config.vocab_size, args.task_tokens)
    prompts = chains(tokens, f, args.batch, args.prompt_len, seed=7).tolist()

    run_case("fp32, random init", model, prompts, args, report)
    random_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    loss = train(model, tokens, f, args.train_steps, args.lr, 32, 64, args.device)
    sync(args.device)
    took = time.perf_counter() - t0
    ref = run_case("fp32, trained", model, prompts, args, report)
    report.notes.append(f"- trained: {args.train_steps} AdamW steps (lr {args.lr}, 32 chains of 64 over "
                        f"{args.task_tokens} tokens) in {took:.1f}s, last loss {loss:.4f}; greedy continues the chain "
                        f"on {100 * follow_rate(ref, prompts, f):.1f}% of fp32 eager tokens")
    model.to(torch.bfloat16)
    state = fastdecode.FAST_STATES.get(model)
    if state is not None:  # FastState.load reuses its buffers by shape, not dtype: make it allocate bf16 ones
        state.cache = None
    run_case("bf16, trained", model, prompts, args, report)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(random_weights[k])
    del random_weights
    run_case("bf16, random init", model, prompts, args, report)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    run_case("bf16, random init, logits x8", model, prompts, args, report,
             "final norm weight x8 (= the tied LM head scaled x8)")
    report.notes.append("- reading: a divergence whose two picks are within bf16 rounding of each other (a gap of "
                        "~1e-2 of a logit) is a near-tie flip, not a bug; bugs show as divergences with large gaps, "
                        "or in fp32. Each later token of a diverged row follows a different prefix, so only the "
                        "first divergence per row is counted.")
    report.save()
    print("\n" + report.text(), flush=True)
    print(f"total {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
