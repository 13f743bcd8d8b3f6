"""bench/gpu_decode.py -- the decode table of bench/gpu_all.sh: ms per decode step of sampler.generate's loops
(eager / static / compiled) and model.generate, against a memory-bandwidth bound whose bytes are stated; then,
with --profile, where the compiled step's time goes.

    python bench/gpu_decode.py --device cuda --dtype bfloat16 --preset 0.5b --batch 256 --profile 16 --out T.md
    python bench/gpu_decode.py --preset toy --batch 8 --prompt-len 16 --max-new 40 --profile 8   # CPU dry run

It reuses bench/sampler.py's machinery (model builder, the loops, the per-step clock, best-of timing) and runs
its "uniform" case only (prompts of one length, greedy, EOS ignored: every row decodes max_new tokens, per-step
times read early and late in the same run), so that both model shapes and the profile fit the 8-minute script.

The bound of one decode step, bytes / bandwidth, where bytes = what a step must move at the least:
  weights  every parameter once (the tied embedding counted once: it is the LM head's matrix)
  KV read  the cache the attention actually reads: the eager and the uncompiled static loop attend over the T
           slots written so far; the compiled step has fixed shapes and attends over every allocated slot,
           S = (prompt + max_new) rounded up to 128, of every row of its power-of-two bucket (the causal mask
           hides the unwritten ones, but their bytes are read). 2 (K, V) x layers x kv_heads x head_dim x dtype
           bytes per slot and row.
  logits   the LM head writes batch x vocab logits in the model's dtype and the token pick reads them once
           (2 x B x V x dtype bytes). Each further fp32 pass over them (sampler.pick_next_tokens upcasts, then
           argmax and log_softmax read them; sampling adds softmax, cumsum, searchsorted) would add
           B x V x 4 bytes; the notes give that figure.
Bandwidth: bench/devices.py by device name (H100 SXM 3.35 TB/s, H200 4.8 TB/s), or --bandwidth.

--profile K: after the table, K compiled decode steps (and K uncompiled static steps) of the first batch run
under torch.profiler; writes the top kernels by device time and a split into GEMM / attention / sampling over
the vocabulary / the rest, per step; plus component timings: the LM-head GEMM alone and the token pick on
B x vocab logits alone (greedy and temperature sampling, eager and compiled).
"""
import argparse
import importlib.util
import math
import os
import sys
import time

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sampler  # noqa: E402  (the repository's, not bench/sampler.py)
from infra import fastdecode  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_sampler", os.path.join(ROOT, "bench", "sampler.py"))
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)
_spec = importlib.util.spec_from_file_location("bench_devices", os.path.join(ROOT, "bench", "devices.py"))
devices = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(devices)

MB = 1e6


def fmt(x, digits=2):
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def pct(x):
    return "-" if x is None or x != x else f"{x:.0f}%"


class Tables:
    """Markdown written to --out after every result (a run cut short keeps what it measured)."""

    def __init__(self, path, title):
        self.path, self.parts = path, [title, ""]

    def add(self, *lines):
        self.parts += list(lines)
        self.save()

    def save(self):
        if self.path:
            with open(self.path, "w") as f:
                f.write("\n".join(self.parts) + "\n")


def shape_bytes(model):
    cfg = model.config
    weight = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_slot = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * model.dtype.itemsize
    return weight, kv_slot


def decode_table(model, args, batch, tables, bw):
    """The uniform case at one batch size: tok/s and ms/step per loop, and the bound with its bytes. The loops run
    one after another, compiled last, and the table is rewritten after each: a run cut short (a slow compile)
    keeps the loops it finished."""
    device, steps, loops = args.device, args.max_new, args.loops
    window = max(1, min(args.window, (steps - 16) // 2))
    marks = [8, 8 + window, steps - 8 - window, steps - 8]
    prompts = bs.random_prompts([args.prompt_len] * batch, model.config.vocab_size, seed=1)
    weight, kv_slot = shape_bytes(model)
    vocab, item = model.config.vocab_size, model.dtype.itemsize
    bucket = max(8, 1 << (batch - 1).bit_length())
    slots = -(-(args.prompt_len + steps) // 128) * 128  # FastState.load: prompt + max_new rounded up to 128
    logits = 2 * batch * vocab * item
    at = len(tables.parts)
    best = {}
    for loop in sorted(loops, key=lambda loop: loop == "compiled"):
        best.update(bs.best_of(args.repeats, [loop], lambda loop, clock: bs.run(loop, model, prompts, steps,
                                                                                  clock=clock),
                               device, marks, f"batch {batch} uniform"))
        outs = {k: out for k, (out, _, _) in best.items()}
        same = {k: sum(a == b for a, b in zip(v, outs["eager"])) for k, v in outs.items()
                if v and outs.get("eager") and k != "eager"}
        rows = []
        for name, (a, b) in (("early", marks[:2]), ("late", marks[2:])):
            T = args.prompt_len + (a + b) // 2  # the context at the middle of the window
            kv_c, kv_o = bucket * slots * kv_slot, batch * T * kv_slot
            bound_c = (weight + kv_c + bucket * vocab * item * 2) / bw if bw else float("nan")
            bound_o = (weight + kv_o + logits) / bw if bw else float("nan")
            ms = {k: best[k][2].per_step(a, b) * 1e3 if k in best else float("nan") for k in loops}
            cells = " | ".join(fmt(ms[k]) for k in loops)
            pc = 100 * bound_c * 1e3 / ms["compiled"] if "compiled" in ms and bw else float("nan")
            ps = 100 * bound_o * 1e3 / ms["static"] if "static" in ms and bw else float("nan")
            rows.append(f"| {batch} | {name}, T={T} | {slots} / {T} | {weight / MB:.0f} | {kv_c / MB:.0f} / "
                        f"{kv_o / MB:.0f} | {logits / MB:.0f} | {fmt(bound_c * 1e3, 3)} / {fmt(bound_o * 1e3, 3)} | "
                        f"{cells} | {pct(pc)} | {pct(ps)} |")
        tok_s = " / ".join(f"{k} {batch * steps / best[k][1]:.0f}" for k in loops if k in best)
        head = " | ".join(f"{k} ms" for k in loops)
        del tables.parts[at:]
        tables.add(f"batch {batch}, prompt {args.prompt_len}, {steps} new tokens, greedy, EOS ignored. tok/s: {tok_s}. "
                   f"Rows identical to eager (bf16 near-ties flip some; see the parity table): {same}. "
                   f"{bs.compiled_note(model) if 'compiled' in best else ''}one further fp32 pass over the logits = "
                   f"{batch * vocab * 4 / MB:.0f} MB" + (f" = {batch * vocab * 4 / bw * 1e3:.3f} ms" if bw else ""), "",
                   f"| batch | position | KV slots read (compiled / others) | weights MB | KV read MB (compiled / "
                   f"others) | logits MB | bound ms (compiled / others) | {head} | compiled % bound | static % bound |",
                   "|" + "---|" * (9 + len(loops)), *rows, "")
    return prompts


# ---- where the time goes ----

CATEGORIES = [  # (category, substrings of kernel / op names), first match wins
    ("attention (SDPA kernels)", ("flash", "fmha", "attention", "efficient_attention", "sdpa", "cudnn_generated_fort")),
    ("sampling over the vocabulary (softmax, argmax, cumsum, search, sort)",
     ("softmax", "argmax", "argmin", "cumsum", "searchsorted", "sort", "topk", "scan", "logsumexp")),
    ("GEMM (weights, LM head)", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "sm80_", "ampere", "hopper", "matmul",
                                 "aten::mm", "aten::addmm", "aten::bmm", "cublas")),
    ("copies, fills", ("memcpy", "memset", "copy", "fill", "cat", "index_put", "scatter", "gather")),
]


def category(name):
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "the rest (norms, rope, elementwise, host work)"


def profiled_steps(model, prompts, steps, loop, k, device):
    """torch.profiler over k decode steps of `loop` (started after 4 warm steps, inside the step wrapper)."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    prof = profile(activities=acts)
    step, calls, t = fastdecode.FastState.step, [0], {}

    def wrapped(self, *a):
        if calls[0] == 4:
            bs.sync(device)
            prof.start()
            t["start"] = time.perf_counter()
        if calls[0] == 4 + k:
            bs.sync(device)
            t["end"] = time.perf_counter()
            prof.stop()
        calls[0] += 1
        return step(self, *a)

    fastdecode.FastState.step = wrapped
    try:
        bs.run(loop, model, prompts, min(steps, k + 8))
    finally:
        fastdecode.FastState.step = step
    if "end" not in t:
        prof.stop()
        return None, float("nan")
    return prof, (t["end"] - t["start"]) / k


def kernel_times(prof, cuda):
    """{name: (calls, ms)}: on CUDA every device activity (kernels, memcpy, memset; GPU-side user annotations
    left out, they would count their kernels twice), by duration; on the CPU the aten ops' self times."""
    out = {}
    if cuda:
        from torch.autograd import DeviceType
        for e in prof.events():
            if e.device_type != DeviceType.CUDA or getattr(e, "is_user_annotation", False):
                continue
            calls, ms = out.get(e.name, (0, 0.0))
            out[e.name] = (calls + 1, ms + (e.time_range.end - e.time_range.start) / 1e3)
    else:
        for e in prof.key_averages():
            if e.key.startswith("aten::") and e.self_cpu_time_total > 0:
                out[e.key] = (e.count, e.self_cpu_time_total / 1e3)
    return out


def profile_tables(model, prompts, args, tables):
    cuda, k = args.device.startswith("cuda"), args.profile
    for loop in [loop for loop in ("compiled", "static") if loop in args.loops]:
        prof, wall = profiled_steps(model, prompts, args.max_new, loop, k, args.device)
        if prof is None:
            tables.add(f"profile of the {loop} step: too few steps", "")
            continue
        kernels = kernel_times(prof, cuda)
        total = sum(ms for _, ms in kernels.values())  # over k steps
        by_cat = {}
        for name, (_, ms) in kernels.items():
            by_cat[category(name)] = by_cat.get(category(name), 0.0) + ms
        what = "GPU kernel" if cuda else "CPU op (self time)"
        lines = [f"**Profile of the {loop} decode step** ({k} steps, batch {len(prompts)}, torch.profiler; wall "
                 f"{wall * 1e3:.2f} ms/step under the profiler, {what} time {total / k:.3f} ms/step"
                 + ("; no kernels recorded: CUDA-graph replays hid them from CUPTI" if cuda and not kernels else "")
                 + ")", "", f"| {what} time by kind | ms/step | % |", "|---|---|---|"]
        lines += [f"| {c} | {v / k:.3f} | {100 * v / max(total, 1e-12):.0f}% |"
                  for c, v in sorted(by_cat.items(), key=lambda x: -x[1])]
        lines += ["", f"| top {'kernels' if cuda else 'ops'} | calls/step | ms/step | % | kind |", "|---|---|---|---|---|"]
        for name, (calls, ms) in sorted(kernels.items(), key=lambda x: -x[1][1])[: args.top]:
            shown = name.replace("|", "/")
            shown = shown if len(shown) <= 90 else shown[:87] + "..."
            lines.append(f"| `{shown}` | {calls / k:.1f} | {ms / k:.3f} | {100 * ms / max(total, 1e-12):.1f}% | "
                         f"{category(name).split(' (')[0]} |")
        tables.add(*lines, "")
        print("\n".join(lines), flush=True)
    component_table(model, len(prompts), args, tables)


def cuda_ms(fn, device, reps):
    """Mean ms of fn() over reps calls, after 2 warm calls (CUDA events on a GPU, perf_counter on the CPU)."""
    for _ in range(2):
        fn()
    bs.sync(device)
    if device.startswith("cuda"):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / reps
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def component_table(model, batch, args, tables):
    """The LM head and the token pick alone at this batch: what the vocabulary costs per step."""
    device, dtype, cfg = args.device, model.dtype, model.config
    vocab, d = cfg.vocab_size, cfg.hidden_size
    head = model.get_output_embeddings().weight  # (V, d)
    h = torch.randn(batch, d, device=device, dtype=dtype)
    logits = torch.nn.functional.linear(h, head)  # (B, V)
    uniform = torch.rand(batch, device=device)
    bw = args.bw
    item = dtype.itemsize
    rows = []

    def add(name, fn, nbytes, flops=None):
        try:
            ms = cuda_ms(fn, device, args.reps)
        except Exception as error:  # noqa: BLE001 -- a failed compile is a row, not the end of the run
            rows.append(f"| {name} | FAILED: {type(error).__name__}: {str(error)[:80]} | | | |")
            return
        bound = nbytes / bw * 1e3 if bw else float("nan")
        tflops = f"{flops / ms / 1e9:.0f}" if flops else "-"
        rows.append(f"| {name} | {ms:.3f} | {nbytes / MB:.0f} | {fmt(bound, 3)} | {tflops} |")
        tables.save()

    add("LM head GEMM (B x d) @ (d x V)", lambda: torch.nn.functional.linear(h, head),
        vocab * d * item + batch * vocab * item, 2 * batch * d * vocab)
    greedy = lambda: sampler.pick_next_tokens(logits, 0, 0, 1.0, None)  # noqa: E731
    sample = lambda: sampler.pick_next_tokens(logits, 1.0, 0, 1.0, uniform)  # noqa: E731
    add("token pick, greedy (eager): float, argmax, log_softmax, gather", greedy, batch * vocab * item)
    add("token pick, T=1 sampling (eager): + softmax, cumsum, searchsorted", sample, batch * vocab * item)
    if args.compile_components:
        pick = torch.compile(sampler.pick_next_tokens, dynamic=False)
        add("token pick, greedy (torch.compile)", lambda: pick(logits, 0, 0, 1.0, None), batch * vocab * item)
        add("token pick, T=1 sampling (torch.compile)", lambda: pick(logits, 1.0, 0, 1.0, uniform), batch * vocab * item)
    tables.add(f"**Components at batch {batch}** (alone, {args.reps} calls each; bytes: one read of the "
               f"{batch} x {vocab} logits in {str(dtype).split('.')[-1]}, plus the LM head's matrix for the GEMM)", "",
               "| component | ms | bytes MB | bound ms | TFLOP/s |", "|---|---|---|---|---|", *rows, "")
    print("\n".join(tables.parts[-len(rows) - 4:]), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--preset", default="toy", choices=sorted(bs.PRESETS))
    ap.add_argument("--batch", type=int, nargs="+", default=[256])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--loops", nargs="+", default=None, help="default: eager static compiled generate on CUDA, "
                                                             "eager static generate on the CPU")
    ap.add_argument("--bandwidth", type=float, default=None, help="bytes/s; default: bench/devices.py by name")
    ap.add_argument("--profile", type=int, default=0, help="profile this many decode steps of the first batch")
    ap.add_argument("--top", type=int, default=20, help="rows of the profile's top-kernel table")
    ap.add_argument("--reps", type=int, default=20, help="calls per component timing")
    ap.add_argument("--compile-components", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the compiled token pick (default: on CUDA)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    args.loops = args.loops or (["eager", "static", "compiled", "generate"] if cuda else ["eager", "static", "generate"])
    if args.compile_components is None:
        args.compile_components = cuda
    started = time.perf_counter()
    name = devices.device_name(args.device)
    pk = devices.peak(name) if cuda else None
    args.bw = args.bandwidth or (pk.bandwidth if pk else None)
    model = bs.build_model(args.preset, args.device, getattr(torch, args.dtype), "sdpa")
    weight, kv_slot = shape_bytes(model)
    title = (f"### Decode: {args.preset} ({weight / model.dtype.itemsize / 1e6:.0f}M params, {args.dtype}) on {name}"
             f"\n\ntorch {torch.__version__}, transformers {transformers.__version__}; weights {weight / MB:.0f} MB, "
             f"KV {kv_slot} bytes per slot and row; bound at "
             + (f"{args.bw / 1e12:.2f} TB/s ({pk.label if pk and not args.bandwidth else '--bandwidth'})"
                if args.bw else "- (no bandwidth for this device)")
             + ". Bound = (weights + KV read + logits written and read once) / bandwidth (bench/gpu_decode.py).")
    print(title, flush=True)
    tables = Tables(args.out, title)
    warm = bs.random_prompts([8] * 2, model.config.vocab_size)
    for loop in args.loops:
        if loop != "compiled":
            bs.run(loop, model, warm, 4)
    print(f"  model built and warmed up in {time.perf_counter() - started:.0f}s", flush=True)
    first = None
    for batch in args.batch:
        prompts = decode_table(model, args, batch, tables, args.bw)
        first = first or prompts
        print(f"  batch {batch} done at {time.perf_counter() - started:.0f}s", flush=True)
    print("\n".join(tables.parts), flush=True)
    if args.profile and first:
        profile_tables(model, first, args, tables)
    print(f"total {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
