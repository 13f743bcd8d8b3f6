"""
Benchmark sampler.generate's decode loops against Hugging Face model.generate, side by side in one run, on the
same random-init model.

    python bench/sampler.py                                     # CPU, ~34M params, fp32, 2 threads (minutes)
    python bench/sampler.py --preset toy --batch 128 --prompt-len 60 --max-new 48   # the trainer demo's shapes
    bash bench/gpu.sh                                           # CUDA: 0.5B and 1.5B, bf16, batch 256 and 64

Loops (columns):
  eager     sampler.generate(fast=False): DynamicCache, finished rows dropped every check (the reference)
  static    sampler.generate(fast="static"): preallocated cache written in place, not compiled (what FSDP gets)
  compiled  sampler.generate(fast="compile"), what fast=True runs on CUDA: the static loop, its step compiled
  generate  model.generate (DynamicCache, eager, no compaction)
Cases (greedy, so all loops produce the same tokens up to bf16 near-ties):
  uniform  prompts of one length, EOS ignored: every row decodes max_new tokens. Per-step times are read
           during this run: a device sync and a timestamp at 4 decode steps only, around step 8 + window/2
           (early) and max_new - 8 - window/2 (late); the position column is prompt length + that step.
  ragged   prompt lengths uniform in [prompt/4, prompt], and each row stops at a pseudo-random step like an RL
           rollout: a forward hook forces EOS when hash(last token, position) % (max_new // 4) == 0 (for every
           loop, so lengths are roughly geometric, mean ~max_new / 4, with a tail to max_new). tok/s counts
           tokens up to and including EOS.
  G=8      prefill only (max_new 1) of G samples of long prompts: sampler prefills each prompt once and repeats
           its cache rows; model.generate(num_return_sequences=G) repeats the prompt G times.
On CUDA the memory-bandwidth bound of a decode step at context T is (weight bytes + batch * T * KV bytes per
token) / bandwidth: every weight and every cached key/value is read once per step. The bound column of the
throughput table averages it over the steps of the uniform case; "% bound" = bound time / measured time.
Run with --help for sizes; every size is a flag.
"""
import argparse
import os
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sampler  # noqa: E402
from infra import fastdecode  # noqa: E402

PRESETS = {
    # the trainer demo's toy policy (train.py build_toy_model), vocab rounded to 64
    "toy": (transformers.Qwen3Config, dict(vocab_size=64, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=32)),
    # ~34M params, Qwen3-style: sized so the CPU run takes a few minutes
    "30m": (transformers.Qwen3Config, dict(vocab_size=16384, hidden_size=512, intermediate_size=1536,
                                           num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                                           head_dim=64)),
    # Qwen2.5-0.5B and -1.5B shapes (random weights)
    "0.5b": (transformers.Qwen2Config, dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                            num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2)),
    "1.5b": (transformers.Qwen2Config, dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                            num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2)),
}
EOS = 1
LOOPS = {"eager": False, "static": "static", "compiled": "compile"}  # sampler.generate's `fast` for each loop


# ---- setup ----

def build_model(preset, device, dtype, attn):
    config_class, shape = PRESETS[preset]
    config = config_class(**shape, tie_word_embeddings=True, max_position_embeddings=8192, eos_token_id=None,
                          bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device: seconds instead of a minute for 1.5B on CPU
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model.eval().generation_config.eos_token_id = None
    return model


def random_prompts(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


def add_eos_forcing_hook(model, period):
    """Force EOS after the last input token when hash(token, position) hits: stops look random per row and
    depend only on the sequence, so every loop stops at the same place. Registered once, before anything is
    compiled (a compiled step only runs the hooks it saw); the uniform case passes no EOS id, so there the
    forced EOS is just another token."""
    def hook(module, args, kwargs, output):
        last_token = kwargs["input_ids"][:, -1]  # (B,)
        position = kwargs["position_ids"][:, -1]  # (B,) position of that token in its own row
        hit = (last_token * 2654435761 + position * 40503) % period == 0
        output.logits[:, -1, EOS] = torch.where(hit, 1e4, output.logits[:, -1, EOS])
        return output
    return model.register_forward_hook(hook, with_kwargs=True)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---- per-step clock ----

class StepClock(transformers.LogitsProcessor):
    """Counts decode steps; at the marked ones syncs the device and takes a timestamp. Hooked into the eager loop
    (sampler.last_logits), the static loops (fastdecode.FastState.step) and model.generate (a logits processor)."""

    def __init__(self, device, marks):
        self.device, self.marks, self.calls, self.times = device, set(marks), 0, {}

    def tick(self):
        if self.calls in self.marks:
            sync(self.device)
            self.times[self.calls] = time.perf_counter()
        self.calls += 1

    def __call__(self, input_ids, scores):
        self.tick()
        return scores

    def per_step(self, start, end):
        return (self.times[end] - self.times[start]) / (end - start) if start in self.times and end in self.times \
            else float("nan")


def clocked(clock):
    """Patch the loops' per-step functions to tick `clock`; returns the undo function."""
    last_logits, step = sampler.last_logits, fastdecode.FastState.step

    def ticking_last_logits(*args):
        clock.tick()
        return last_logits(*args)

    def ticking_step(self, *args):
        clock.tick()
        return step(self, *args)

    sampler.last_logits, fastdecode.FastState.step = ticking_last_logits, ticking_step
    return lambda: (setattr(sampler, "last_logits", last_logits), setattr(fastdecode.FastState, "step", step))


# ---- the loops ----

def run(loop, model, prompts, max_new, eos=None, n=1, clock=None):
    """Tokens per row (cut after EOS) from one loop."""
    if loop == "generate":
        return run_hf(model, prompts, max_new, eos, n, clock)
    undo = clocked(clock) if clock else lambda: None
    try:
        outs = sampler.generate(model, prompts, max_new, temperature=0 if n == 1 else 1.0, n=n, seed=0,
                                eos_token_id=eos, fast=LOOPS[loop])
    finally:
        undo()
    return [c.tokens for c in outs]


def run_hf(model, prompts, max_new, eos, n, clock):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=model.device)  # left padding
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=n > 1, num_return_sequences=n,
                         eos_token_id=eos, pad_token_id=0 if eos is None else eos, top_k=None, top_p=None,
                         logits_processor=[clock] if clock else None)
    rows = out[:, width:].tolist()
    return [r[: r.index(eos) + 1] if eos is not None and eos in r else r for r in rows]


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as error:  # noqa: BLE001 -- report and go on with the other loops
        print(f"  FAILED: {type(error).__name__}: {error}", flush=True)
        return None, float("nan")
    sync(device)
    return result, time.perf_counter() - start


def best_of(repeats, loops, fn, device, marks, label):
    """Run the loops alternately `repeats` times (so load noise hits all); keep each one's fastest run as
    (output, seconds, its StepClock). The compiled loop first runs once untimed: compiling and recording the
    CUDA graphs of this case's shapes is a one-off cost, not a per-call one."""
    best = {}
    for _ in range(repeats):
        for loop in sorted(loops, key=lambda loop: loop == "compiled"):  # last: a failing compile costs the most
            if loop == "compiled" and loop not in best:
                timed(lambda: fn(loop, None), device)
            clock = StepClock(device, marks)
            out, t = timed(lambda: fn(loop, clock), device)
            steps = f", per step {clock.per_step(*marks[:2]) * 1e3:.2f} -> {clock.per_step(*marks[2:]) * 1e3:.2f} ms" \
                if len(clock.times) == 4 else ""
            print(f"  {label} {loop}: {t:.2f}s{steps}", flush=True)
            if loop not in best or t < best[loop][1]:
                best[loop] = out, t, clock
    return best


def compiled_note(model):
    """Whether the compiled loop really ran compiled (a failed compile falls back to the static loop)."""
    state = fastdecode.FAST_STATES.get(model)
    if state is None:
        return ""
    from torch._dynamo.utils import counters
    if state.step_fn is None:
        return "COMPILE FAILED: 'compiled' ran the static loop; "
    skips = counters["inductor"].get("cudagraph_skips", 0)
    return (f"{counters['stats'].get('unique_graphs', 0)} dynamo graph(s)"
            + (f", {skips} CUDA graph skip(s)" if skips else "") + "; ")


# ---- cases ----

class Report:
    """Two markdown tables filled as results arrive; printed and (with --out) rewritten after every case."""

    def __init__(self, title, loops, path, bandwidth_rows):
        self.title, self.loops, self.path, self.gpu = title, loops, path, bandwidth_rows
        self.throughput, self.steps = [], []

    def tables(self):
        cols = " | ".join(self.loops)
        gpu = " bound tok/s | compiled % bound |" if self.gpu else ""
        lines = [self.title, "", f"| batch | case | {cols} | tok/s: fastest sampler / generate |{gpu} notes |",
                 "|" + "---|" * (len(self.loops) + 4 + 2 * self.gpu)] + self.throughput
        gpu = " bound ms | compiled % bound | static % bound |" if self.gpu else ""
        lines += ["", f"| batch | position | {' | '.join(f'{loop} ms/step' for loop in self.loops)} |{gpu}",
                  "|" + "---|" * (len(self.loops) + 2 + 3 * self.gpu)] + self.steps
        return "\n".join(lines) + "\n"

    def save(self):
        if self.path:
            with open(self.path, "w") as f:
                f.write(self.tables())


def fmt(x, digits=0):
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def bench_batch(model, args, batch, report, bound):
    vocab, device, loops = model.config.vocab_size, args.device, report.loops
    steps = args.max_new
    window = max(1, min(args.window, (steps - 16) // 2))
    marks = [8, 8 + window, steps - 8 - window, steps - 8]

    # uniform: throughput, and per-step time early and late in the same run
    prompts = random_prompts([args.prompt_len] * batch, vocab, seed=1)
    best = best_of(args.repeats, loops, lambda loop, clock: run(loop, model, prompts, steps, clock=clock),
                   device, marks, f"batch {batch} uniform")
    tok_s = {loop: batch * steps / t for loop, (_, t, _) in best.items()}
    early = {loop: clock.per_step(marks[0], marks[1]) for loop, (_, _, clock) in best.items()}
    late = {loop: clock.per_step(marks[2], marks[3]) for loop, (_, _, clock) in best.items()}
    outs = {loop: out for loop, (out, _, _) in best.items()}
    same = {k: sum(a == b for a, b in zip(v, outs["eager"])) for k, v in outs.items() if v and outs.get("eager")}
    mean_t = args.prompt_len + (steps + 1) / 2
    add_throughput(report, batch, "uniform, greedy, EOS ignored", tok_s, bound and batch / bound(batch, mean_t),
                   f"{compiled_note(model)}rows identical to eager: {same}")
    for name, times, step in (("early", early, (marks[0] + marks[1]) // 2), ("late", late, (marks[2] + marks[3]) // 2)):
        position = args.prompt_len + step
        cells = " | ".join(fmt(times[loop] * 1e3, 2) for loop in loops)
        gpu = ""
        if bound:
            b = bound(batch, position)
            gpu = f" {b * 1e3:.2f} | {fmt(100 * b / times.get('compiled', float('nan')))}% |" \
                  f" {fmt(100 * b / times.get('static', float('nan')))}% |"
        report.steps.append(f"| {batch} | {name}, T={position} | {cells} |{gpu}")
    report.save()

    # ragged, RL-like
    lengths = torch.randint(args.prompt_len // 4, args.prompt_len + 1, (batch,),
                            generator=torch.Generator().manual_seed(2)).tolist()
    prompts = random_prompts(lengths, vocab, seed=2)
    best = best_of(args.repeats, loops, lambda loop, clock: run(loop, model, prompts, steps, EOS), device, [],
                   f"batch {batch} ragged")
    useful = {loop: sum(map(len, out)) if out else 0 for loop, (out, _, _) in best.items()}
    tok_s = {loop: useful[loop] / t for loop, (_, t, _) in best.items()}
    add_throughput(report, batch, "ragged prompts, EOS at random steps (RL-like)", tok_s, None,
                   f"useful tokens {useful}")
    report.save()


def add_throughput(report, batch, case, tok_s, bound_tok_s, note):
    ours = max((v for k, v in tok_s.items() if k != "generate" and v == v), default=float("nan"))
    ratio = fmt(ours / tok_s["generate"], 2) + "x" if "generate" in tok_s else "-"
    cells = " | ".join(fmt(tok_s.get(loop)) for loop in report.loops)
    gpu = f" {fmt(bound_tok_s)} | {fmt(100 * tok_s.get('compiled', float('nan')) / bound_tok_s)}% |" \
        if report.gpu and bound_tok_s else (" - | - |" if report.gpu else "")
    report.throughput.append(f"| {batch} | {case} | {cells} | {ratio} |{gpu} {note} |")


def bench_shared_prefill(model, args, report):
    n_prompts = max(1, args.batch[0] // args.g)
    prompts = random_prompts([args.g_prompt_len] * n_prompts, model.config.vocab_size, seed=3)
    best = best_of(1, report.loops, lambda loop, clock: run(loop, model, prompts, 1, n=args.g), args.device, [],
                   "G prefill")
    tok_s = {loop: args.g * sum(map(len, prompts)) / t for loop, (_, t, _) in best.items()}
    add_throughput(report, n_prompts * args.g, f"G={args.g} x {n_prompts} prompts of {args.g_prompt_len}, prefill "
                   "(prompt tok/s)", tok_s, None, "")
    report.save()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--preset", default="30m", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, nargs="+", default=[32], help="rows per decode case (several: one each)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--window", type=int, default=32, help="steps per early/late per-step measurement")
    ap.add_argument("--repeats", type=int, default=None, help="best of this many runs (default 2 on CPU, 1 on CUDA)")
    ap.add_argument("--loops", nargs="+", default=None, help="default: eager static generate (+ compiled on CUDA)")
    ap.add_argument("--g", type=int, default=8)
    ap.add_argument("--g-prompt-len", type=int, default=1024, help="0 skips the G case")
    ap.add_argument("--bandwidth", type=float, default=3.35e12, help="bytes/s of device memory (H100 SXM)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", help="sdpa | eager")
    ap.add_argument("--out", default=None, help="also write the markdown tables here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    args.repeats = args.repeats or (1 if cuda else 2)
    loops = args.loops or (["eager", "static", "compiled", "generate"] if cuda else ["eager", "static", "generate"])

    started = time.perf_counter()
    model = build_model(args.preset, args.device, getattr(torch, args.dtype), args.attn)
    add_eos_forcing_hook(model, max(2, args.max_new // 4))
    cfg = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * model.dtype.itemsize  # per token

    def bound(batch, context):  # seconds per decode step if only weights and the KV cache were read, once
        return (weight_bytes + batch * context * kv_bytes) / args.bandwidth

    device_name = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} threads"
    title = (f"**{args.preset}** ({weight_bytes / model.dtype.itemsize / 1e6:.0f}M params, {args.dtype}, "
             f"{args.attn}) on {device_name}: prompt {args.prompt_len}, max_new {args.max_new}; torch "
             f"{torch.__version__}, transformers {transformers.__version__}"
             + (f"; bound at {args.bandwidth / 1e12:.2f} TB/s" if cuda else ""))
    print(title, flush=True)
    report = Report(title, loops, args.out, cuda)
    warm = random_prompts([8] * 2, cfg.vocab_size)
    for loop in loops:
        if loop != "compiled":  # the compiled loop warms up inside each case, on that case's shapes
            run(loop, model, warm, 4)
    print(f"  model built and warmed up in {time.perf_counter() - started:.0f}s", flush=True)

    for batch in args.batch:
        bench_batch(model, args, batch, report, bound if cuda else None)
        print(f"  batch {batch} done at {time.perf_counter() - started:.0f}s", flush=True)
    if args.g_prompt_len:
        bench_shared_prefill(model, args, report)
    print("\n" + report.tables(), flush=True)
    print(f"total {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
