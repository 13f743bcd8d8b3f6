"""
Benchmark sampler.generate against Hugging Face model.generate on the same random-init Qwen3 model.

    python bench/sampler.py                                         # CPU, ~34M params, fp32 (a few minutes)
    python bench/sampler.py --device cuda --dtype bfloat16 --preset 0.5b --bandwidth 3.35e12

Cases (greedy, so both produce the same tokens and the same number of useful tokens):
  uniform  every prompt has the same length, no EOS: both decode the full batch every step.
  ragged   ragged prompts, and each row stops at a pseudo-random step, like RL rollouts: a forward hook
           forces EOS when hash(last token, position) % (max_new // 4) == 0, for both implementations, so
           lengths are roughly geometric (mean ~max_new / 4) with a tail that hits max_new.
           Useful tokens = tokens up to and including EOS.
  G=8      prefill of G samples of long prompts (max_new_tokens=1): ours prefills each prompt once and
           repeats its cache rows, model.generate(num_return_sequences=G) repeats the prompt G times.
           tok/s counts prompt tokens served, G per prompt.
The bound column is the memory-bandwidth roofline of decode: batch * bandwidth / weight bytes per step.
"""
import argparse
import os
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sampler import generate  # noqa: E402

PRESETS = {
    # ~34M params, Qwen3-style: sized so the CPU run takes a few minutes
    "30m": dict(vocab_size=16384, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                num_attention_heads=8, num_key_value_heads=4, head_dim=64),
    # ~0.5B params, Qwen2.5-0.5B shapes
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, head_dim=64),
}
EOS = 1


# ---- setup ----

def build_model(preset, device, dtype, attn="sdpa"):
    config = transformers.Qwen3Config(**PRESETS[preset], tie_word_embeddings=True, max_position_embeddings=8192,
                                      eos_token_id=None, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model = model.to(device).eval()
    model.generation_config.eos_token_id = None
    return model


def random_prompts(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


def add_eos_forcing_hook(model, period):
    """Force EOS after the last input token when hash(token, position) hits: stops look random per row,
    and depend only on the sequence, so both implementations stop at the same place."""
    def hook(module, args, kwargs, output):
        last_token = kwargs["input_ids"][:, -1]  # (B,)
        position = kwargs["attention_mask"].sum(-1) - 1  # (B,) position of that token
        hit = (last_token * 2654435761 + position * 40503) % period == 0
        output.logits[:, -1, EOS] = torch.where(hit, 1e4, output.logits[:, -1, EOS])
        return output
    return model.register_forward_hook(hook, with_kwargs=True)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def best_of(repeats, fns, device):
    """Run the functions alternately `repeats` times (so load noise hits both); keep each one's best time."""
    results, times = [None] * len(fns), [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            results[i], t = timed(fn, device)
            times[i] = min(times[i], t)
    return results, times


# ---- the two implementations ----

def run_ours(model, prompts, max_new, n=1, eos=None):
    outs = generate(model, prompts, max_new, temperature=0 if n == 1 else 1.0, n=n, seed=0, eos_token_id=eos)
    return [c.tokens for c in outs]


def run_hf(model, prompts, max_new, n=1, eos=None):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=model.device)  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=n > 1,
                         num_return_sequences=n, eos_token_id=eos, pad_token_id=0 if eos is None else eos,
                         top_k=None, top_p=None)
    return [cut_at_eos(row, eos) for row in out[:, width:].tolist()]


def cut_at_eos(tokens, eos):
    return tokens[: tokens.index(eos) + 1] if eos is not None and eos in tokens else tokens


# ---- cases ----

def bench_decode(model, prompts, max_new, device, repeats, eos=None):
    (ours, ref), (t_ours, t_ref) = best_of(repeats, [lambda: run_ours(model, prompts, max_new, eos=eos),
                                                     lambda: run_hf(model, prompts, max_new, eos=eos)], device)
    same = sum(a == b for a, b in zip(ours, ref))
    useful_ours, useful_ref = sum(map(len, ours)), sum(map(len, ref))
    note = (f"{same}/{len(prompts)} rows identical; useful tokens {useful_ours} vs {useful_ref}, "
            f"longest {max(map(len, ours))}; {t_ours:.1f}s vs {t_ref:.1f}s")
    return useful_ours / t_ours, useful_ref / t_ref, note


def bench_shared_prefill(model, prompts, g, device):
    _, (t_ours, t_ref) = best_of(1, [lambda: run_ours(model, prompts, 1, n=g),
                                     lambda: run_hf(model, prompts, 1, n=g)], device)
    served = g * sum(map(len, prompts))
    return served / t_ours, served / t_ref, f"prefill {t_ours:.2f}s vs {t_ref:.2f}s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--preset", default="30m", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="decode cases: best of this many runs")
    ap.add_argument("--g", type=int, default=8)
    ap.add_argument("--g-prompt-len", type=int, default=1024)
    ap.add_argument("--bandwidth", type=float, default=3.35e12, help="bytes/s of device memory (H100 SXM)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", help="sdpa | eager | flash_attention_2 (if installed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(args.preset, args.device, getattr(torch, args.dtype), args.attn)
    vocab = model.config.vocab_size
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bound = args.batch * args.bandwidth / weight_bytes  # decode tok/s if every step only reads the weights once
    print(f"model {args.preset}: {weight_bytes / model.dtype.itemsize / 1e6:.1f}M params, {args.dtype}, "
          f"{args.device}, {args.attn}, batch {args.batch}, prompt {args.prompt_len}, max_new {args.max_new}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    run_ours(model, random_prompts([8] * 2, vocab), 4)  # warm-up both paths
    run_hf(model, random_prompts([8] * 2, vocab), 4)

    uniform = random_prompts([args.prompt_len] * args.batch, vocab, seed=1)
    ragged_lengths = torch.randint(args.prompt_len // 4, args.prompt_len + 1, (args.batch,),
                                   generator=torch.Generator().manual_seed(2)).tolist()
    ragged = random_prompts(ragged_lengths, vocab, seed=2)
    n_prompts = max(1, args.batch // args.g)
    long_prompts = random_prompts([args.g_prompt_len] * n_prompts, vocab, seed=3)

    rows = [("uniform, greedy, no EOS",
             *bench_decode(model, uniform, args.max_new, args.device, args.repeats), bound)]
    handle = add_eos_forcing_hook(model, max(2, args.max_new // 4))
    rows.append(("ragged, greedy, random EOS",
                 *bench_decode(model, ragged, args.max_new, args.device, args.repeats, EOS), bound))
    handle.remove()
    rows.append((f"G={args.g} x {n_prompts} prompts of {args.g_prompt_len}, prefill",
                 *bench_shared_prefill(model, long_prompts, args.g, args.device), None))

    show_bound = args.device.startswith("cuda")
    print("\n| case | ours tok/s | generate tok/s | ratio |" + (" bw bound tok/s |" if show_bound else "") + " notes |")
    print("|---|---|---|---|" + ("---|" if show_bound else "") + "---|")
    for case, ours, ref, note, case_bound in rows:
        extra = (f" {case_bound:.0f} |" if case_bound else " - |") if show_bound else ""
        print(f"| {case} | {ours:.0f} | {ref:.0f} | {ours / ref:.2f}x |{extra} {note} |")


if __name__ == "__main__":
    main()
