"""bench/compare.py -- the paper's central claim in miniature: FAPO vs the RLVR baseline on the toy task.

One SFT cold start (whose traces are 30% flawed positives), then RL arms from that same checkpoint:
baseline (lambda 0) and FAPO (lambda 1) over several seeds, optionally the lambda ablation and a learned
GenRM in place of the oracle. Every arm is an ordinary `python train.py --task rl` run; its eval records
(accuracy, flawed ratio judged by the exact oracle, response length) are gathered into a table and a plot.

    python bench/compare.py                       # full: lambdas 0 0.5 1 1.5, 3 seeds (~20 min on 2 cores)
    python bench/compare.py --quick               # lambdas 0 1, 1 seed, 30 steps (a smoke test)
    python bench/compare.py --genrm out/genrm/rl/hf   # adds a FAPO arm judged by that learned GenRM

Writes OUT/compare.md (the table) and OUT/compare.png (needs matplotlib; skipped without it).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--out", default="out/compare")
ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("--sft-steps", type=int, default=800)
ap.add_argument("--eval-every", type=int, default=10)
ap.add_argument("--eval-prompts", type=int, default=256, help="x --eval-samples 4 = samples per evaluation")
ap.add_argument("--genrm", default=None, help="a learned GenRM dir: adds a lambda-1 arm judged by it")
ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
ap.add_argument("--quick", action="store_true", help="lambdas 0 1, seed 0, 30 steps, 400 SFT steps")
args = ap.parse_args()
if args.quick:
    args.lambdas, args.seeds, args.steps, args.sft_steps, args.eval_every = [0.0, 1.0], [0], 30, 400, 10


def run(cmd, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + cmd + ["--no-progress"],
                           stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"failed: train.py {' '.join(cmd)} (see {log})")


def finished(out_dir, steps):
    """An arm is done when its last evaluation (at the final step) is logged; otherwise it is rerun."""
    path = os.path.join(out_dir, "metrics.jsonl")
    return os.path.exists(path) and any(m.get("step") == steps and "eval" in m for m in map(json.loads, open(path)))


def evals(out_dir):
    return [m for m in map(json.loads, open(os.path.join(out_dir, "metrics.jsonl"))) if "eval" in m]


# ---- runs ----
os.makedirs(args.out, exist_ok=True)
t0 = time.time()
sft_dir = os.path.join(args.out, "sft")
common = ["--steps", str(args.steps), "--eval-every", str(args.eval_every), "--eval-prompts", str(args.eval_prompts)]
if not os.path.exists(os.path.join(sft_dir, "sft", "hf", "model.safetensors")):  # the phase's final export
    print(f"SFT cold start ({args.sft_steps} steps) ...", flush=True)
    run(["--sft-steps", str(args.sft_steps), "--steps", "0", "--out", sft_dir], os.path.join(args.out, "sft.log"))
ckpt = os.path.join(sft_dir, "sft", "hf")
arms = [(f"lambda={lam:g}", lam, "oracle") for lam in args.lambdas]
if args.genrm:
    arms.append(("lambda=1 learned GenRM", 1.0, args.genrm))
jobs = []
for name, lam, judge in arms:
    for seed in args.seeds:
        out = os.path.join(args.out, name.replace(" ", "_").replace("=", ""), f"seed{seed}")
        if not finished(out, args.steps):
            shutil.rmtree(out, ignore_errors=True)  # a killed arm restarts clean (metrics.jsonl appends)
            jobs.append((["--task", "rl", "--model", ckpt, "--fapo-lambda", str(lam), "--genrm", judge,
                          "--seed", str(seed), "--out", out] + common, out + ".log"))
print(f"{len(jobs)} RL runs, {args.jobs} at a time ...", flush=True)
os.makedirs(args.out, exist_ok=True)
for _, log in jobs:
    os.makedirs(os.path.dirname(log), exist_ok=True)
with ThreadPoolExecutor(args.jobs) as pool:
    list(pool.map(lambda j: run(*j), jobs))

# ---- table ----
curves = {}  # arm -> metric -> step -> [values over seeds]
for name, _, _ in arms:
    for seed in args.seeds:
        out = os.path.join(args.out, name.replace(" ", "_").replace("=", ""), f"seed{seed}")
        for m in evals(out):
            step = m.get("step", 0)
            for key in ("acc", "flawed_ratio", "response_length"):
                val = next(v for k, v in m.items() if k.startswith(f"eval_{key}"))
                curves.setdefault(name, {}).setdefault(key, {}).setdefault(step, []).append(val)


def fmt(vals):
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


lines = [f"Toy task, SFT cold start then {args.steps} RL steps; seeds {args.seeds}; evaluation on "
         f"{args.eval_prompts} held-out prompts x 4 samples at temperature 1; flawed ratio = oracle-flagged / "
         "correct; mean ± std over seeds.", "",
         "| arm | acc start | acc end | flawed ratio start | flawed ratio end | length start | length end |",
         "|---|---|---|---|---|---|---|"]
for name in curves:
    c = curves[name]
    first, last = min(c["acc"]), max(c["acc"])
    lines.append(f"| {name} | " + " | ".join(fmt(c[k][s]) for k in ("acc", "flawed_ratio", "response_length")
                                               for s in (first, last)) + " |")
table = "\n".join(lines)
open(os.path.join(args.out, "compare.md"), "w").write(table + f"\n\n({time.time() - t0:.0f} s)\n")
print(table)
print(f"({time.time() - t0:.0f} s)")

# ---- plot ----
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib not installed: no plot (pip install matplotlib)")
    sys.exit(0)
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for ax, key, title in zip(axes, ("acc", "flawed_ratio", "response_length"),
                          ("accuracy (avg@4)", "flawed positives / correct (oracle)", "response length (tokens)")):
    for name in curves:
        steps = sorted(curves[name][key])
        vals = [curves[name][key][s] for s in steps]
        mean = [statistics.mean(v) for v in vals]
        ax.plot(steps, mean, label=name)
        ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2)
    ax.set_title(title)
    ax.set_xlabel("RL step")
    ax.grid(alpha=0.3)
axes[0].legend()
fig.suptitle(f"FAPO vs baseline on the toy task (mean, min-max band over {len(args.seeds)} seeds)")
fig.tight_layout()
fig.savefig(os.path.join(args.out, "compare.png"), dpi=110)
print(f"wrote {os.path.join(args.out, 'compare.png')}")
