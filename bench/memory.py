"""bench/memory.py -- peak memory per rank of setup (load + shard), one RL update, one resumable save and one HF
export, for a model shape and a world size. Prints a markdown table.

    python bench/memory.py --shape 0.5b --nproc 2            # random weights shaped like Qwen2.5-0.5B (CPU: RSS)
    python bench/memory.py --model DIR --nproc 8             # a real HF dir (GPU: CUDA peak as well)

CPU: the resident set from /proc/self/status. VmHWM is a high-water mark, so it is reset before each phase
(writing 5 to /proc/self/clear_refs) and a phase's figure is its peak minus the RSS it started from: the
memory the phase adds. GPU: torch.cuda.max_memory_allocated, reset per phase, the same way.
The update is one policy_update on synthetic samples (--rows per rank of --prompt-len + --response-len tokens,
--micro-batch-tokens per forward/backward) with AdamW: it includes creating the Adam state (2x the local
shards), which later steps reuse. Runs against any revision with infra.build.load_model and checkpoint.Checkpointer.
On CPU, run it with MALLOC_MMAP_THRESHOLD_=1048576 when comparing several micro-batches: glibc's dynamic
mmap threshold lets freed activation blocks fragment the heap (3 x 2k-token micro-batches: 8.07 GiB per
rank without it, 6.18 with it; docs/memory.md).
"""
import argparse
import inspect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Qwen2.5-0.5B (tied embeddings, q/k/v biases); "tiny" is for a quick try of this script
SHAPES = {"0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                       rope_theta=1e6),
          "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=256, vocab_size=1024, tie_word_embeddings=True, max_position_embeddings=2048)}
PHASES = ("setup", "update", "save", "export")


def make_model_dir(shape, path):
    """Random weights of a shape, saved in HF format (fp32 safetensors) with the toy tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import toy
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**SHAPES[shape])).save_pretrained(path)
    toy.tokenizer().save_pretrained(path)


# ---- the worker: one process per rank, under torchrun ----


def du(path):
    """Bytes under path (files counted once; links not followed)."""
    if not os.path.isdir(path) or os.path.islink(path):
        return 0 if os.path.islink(path) else os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def rss_mib():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def reset_peak(device):
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def measure(name, fn, world, out):
    import torch.distributed as dist
    dist.barrier()
    reset_peak(world.device)
    start, cuda0, t0 = rss_mib()["VmRSS"], torch.cuda.memory_allocated() if world.device.type == "cuda" else 0, time.time()
    fn()
    dist.barrier()
    m = rss_mib()
    row = {"phase": name, "rank": world.rank, "rss_start": start, "rss_peak": m["VmHWM"],
           "rss_added": m["VmHWM"] - start, "seconds": time.time() - t0}
    if world.device.type == "cuda":
        row["cuda_added"] = (torch.cuda.max_memory_allocated() - cuda0) / 2**20
        row["cuda_peak"] = torch.cuda.max_memory_allocated() / 2**20
    out.append(row)


def worker(args):
    import grpo
    import toy
    from infra import build, checkpoint, fsdp
    torch.set_num_threads(1)
    world = fsdp.World()
    tok = toy.tokenizer()
    cfg = SimpleNamespace(model=args.model, context_len=0, grad_checkpointing=args.grad_checkpointing, offload=False,
                          seed=0)
    dtype = torch.bfloat16 if world.device.type == "cuda" else torch.float32
    rows, st = [], {}
    measure("setup", lambda: st.update(model=build.load_model(cfg, world, dtype, tok)), world, rows)
    model = st["model"]
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    rng = random.Random(world.rank)
    vocab = model.config.vocab_size
    samples = [grpo.Sample([rng.randrange(vocab) for _ in range(args.prompt_len)],
                           [rng.randrange(vocab) for _ in range(args.response_len)], rng.uniform(-1, 1))
               for _ in range(args.rows)]
    settings = grpo.UpdateSettings(pad_id=0, micro_batch_tokens=args.micro_batch_tokens, max_response_len=args.response_len)
    measure("update", lambda: grpo.policy_update(model, opt, samples, settings, world), world, rows)
    ck = checkpoint.Checkpointer(args.out, world)
    if "tokenizer" in inspect.signature(ck.save).parameters:  # the old single-part checkpoint: HF dir + trainer state
        measure("save", lambda: ck.save(model, opt, sched, tok, {"step": 1}), world, rows)
    else:
        measure("save", lambda: ck.save(model, opt, sched, {"step": 1}), world, rows)
    if hasattr(ck, "export"):
        measure("export", lambda: ck.export(model, tok, 1), world, rows)
    everything = [None] * world.size
    import torch.distributed as dist
    dist.all_gather_object(everything, rows)
    if world.main:
        with open(args.result, "w") as f:
            json.dump({"rows": [r for part in everything for r in part], "n_params": n_params,
                       "disk": {d: du(os.path.join(args.out, d)) for d in sorted(os.listdir(args.out))}}, f)
    dist.barrier()
    dist.destroy_process_group()


# ---- the driver ----


def table(result, label):
    gib = result["n_params"] * 4 / 2**30
    lines = [f"{label}: {result['n_params'] / 1e6:.0f}M parameters, {gib:.2f} GiB in fp32; per rank, "
             "the memory each phase adds to the RSS it started from (x the fp32 model)", "",
             "| phase | rank | RSS at start (GiB) | peak RSS (GiB) | added (GiB) | added / model | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: (PHASES.index(r["phase"]), r["rank"])):
        lines.append(f"| {r['phase']} | {r['rank']} | {r['rss_start'] / 1024:.2f} | {r['rss_peak'] / 1024:.2f} | "
                     f"{r['rss_added'] / 1024:.2f} | {r['rss_added'] / 1024 / gib:.2f}x | {r['seconds']:.1f} |"
                     + (f" CUDA +{r['cuda_added'] / 1024:.2f} GiB (peak {r['cuda_peak'] / 1024:.2f})" if "cuda_added" in r else ""))
    disk = ", ".join(f"{d} {b / 2**30:.2f} GiB" for d, b in result.get("disk", {}).items() if b)
    return "\n".join(lines + ["", f"on disk: {disk}"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="0.5b", choices=list(SHAPES), help="random weights of this shape")
    ap.add_argument("--model", default="", help="an HF model dir instead of --shape (kept as is)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rows", type=int, default=4, help="samples per rank in the update")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--response-len", type=int, default=96)
    ap.add_argument("--micro-batch-tokens", type=int, default=256)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--label", default="", help="the table's title (e.g. the revision measured)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        from infra import fsdp
        fsdp.close()  # the process group's threads joined before the interpreter's teardown (infra/fsdp.close)
        return
    with tempfile.TemporaryDirectory(prefix="fapo-memory-") as tmp:
        model = args.model
        if not model:
            model = os.path.join(tmp, "model")
            print(f"writing random {args.shape} weights to {model} ...", flush=True)
            make_model_dir(args.shape, model)
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", "--master_port",
               str(29500 + random.randrange(2000)), os.path.abspath(__file__), "--worker", "--model", model,
               "--out", os.path.join(tmp, "out"), "--result", result, "--rows", str(args.rows), "--prompt-len",
               str(args.prompt_len), "--response-len", str(args.response_len), "--micro-batch-tokens",
               str(args.micro_batch_tokens)] + (["--grad-checkpointing"] if args.grad_checkpointing else [])
        subprocess.run(cmd, cwd=os.getcwd(), env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
        with open(result) as f:
            print(table(json.load(f), args.label or f"{args.shape}, {args.nproc} processes"))


if __name__ == "__main__":
    main()
