"""bench/compare.py -- the paper's central claim in miniature: FAPO vs the RLVR baseline on the toy task.

For each toy regime (toy.py; train.py --toy-regime), one SFT cold start, then RL arms from that same
checkpoint: the lambda sweep (0 = the baseline, 1 = FAPO) with the oracle GenRM over several seeds, and
optionally lambda 1 judged by a learned GenRM. Every run is an ordinary `python train.py` run; the eval
records (accuracy, flawed ratio judged by the exact oracle, response length) are gathered into one table
and one plot per regime, and the paper's claims are checked and printed PASS / FAIL with the numbers.

    coupled    the demo's SFT traces (30% flawed): the model's own wrong answers come mostly with slips
    decoupled  flaws that never change the answer, plus independent final slips (20%) as the source of
               wrong answers: outcome reward cannot tell a flawed positive from a clean one

    python bench/compare.py                       # full: both regimes, lambdas 0 0.5 1 1.5, 3 seeds
    python bench/compare.py --quick               # a smoke run: lambdas 0 1, 1 seed, 20 steps, short SFT
    python bench/compare.py --genrm out/genrm/rl/hf --report bench/results   # + a learned GenRM; the docs/results.md files

The learned GenRM (`torchrun train.py --task genrm`) is trained on critique rows with both flaw kinds, the
kinds both regimes use, so the same one serves both. Writes REPORT/compare_REGIME.md and .png (the plot
needs matplotlib); runs go to OUT/REGIME/..., and a rerun skips what is already finished.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGIMES = ("coupled", "decoupled")
SFT_STEPS = {"coupled": 800, "decoupled": 3000}  # decoupled: a longer cold start (docs/results.md)

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--out", default="out/compare", help="where the runs go")
ap.add_argument("--report", default=None, help="where the tables and plots go (default: OUT)")
ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5])
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("--sft-steps", type=int, default=None, help=f"cold-start steps (default: {SFT_STEPS})")
ap.add_argument("--eval-every", type=int, default=20)
ap.add_argument("--eval-prompts", type=int, default=256, help="x 4 samples = samples per evaluation")
ap.add_argument("--genrm", default=None, help="a learned GenRM dir: adds a lambda-1 arm judged by it")
ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
ap.add_argument("--quick", action="store_true", help="lambdas 0 1, seed 0, 20 steps, 200 SFT steps, 128 prompts")
args = ap.parse_args()
if args.quick:
    args.lambdas, args.seeds, args.steps, args.sft_steps, args.eval_every, args.eval_prompts = [0.0, 1.0], [0], 20, 200, 10, 128
args.report = args.report or args.out


def run(cmd, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + cmd + ["--no-progress"],
                           stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"failed: train.py {' '.join(cmd)} (see {log})")


def records(out_dir, phase="rl"):
    """A run's log: train.py writes OUT/PHASE/metrics.jsonl (sft/ for the cold start, rl/ for an arm)."""
    path = os.path.join(out_dir, phase, "metrics.jsonl")
    return [json.loads(line) for line in open(path) if line.strip()] if os.path.exists(path) else []


def finished(out_dir, steps):
    """An RL arm is done when its last evaluation (at the final step) is logged; otherwise it is rerun."""
    return any(m.get("step") == steps and "eval" in m for m in records(out_dir))


def pool(jobs):
    """Run (cmd, log, after) jobs, `--jobs` at a time, in order; a job first waits for the job named by its
    `after` (an index into jobs, or None) to finish. Jobs only wait on earlier ones, so nothing deadlocks."""
    done = [threading.Event() for _ in jobs]
    failed = []

    def one(i):
        cmd, log, after = jobs[i]
        if after is not None:
            done[after].wait()
        try:
            if not failed:
                os.makedirs(os.path.dirname(log), exist_ok=True)
                run(cmd, log)
        except SystemExit as e:
            failed.append(str(e))
        finally:
            done[i].set()
    with ThreadPoolExecutor(args.jobs) as ex:
        list(ex.map(one, range(len(jobs))))
    if failed:
        raise SystemExit(failed[0])


def arm_dir(regime, name, seed):
    return os.path.join(args.out, regime, name.replace(" ", "_").replace("=", ""), f"seed{seed}")


# ---- runs: the cold starts (one per regime), then every RL arm, `--jobs` at a time ----
# Each regime's RL arms start as soon as its own cold start is done (the coupled one is the shorter).
os.makedirs(args.out, exist_ok=True)
os.makedirs(args.report, exist_ok=True)
t0 = time.time()
sft_steps = {r: args.sft_steps or SFT_STEPS[r] for r in args.regimes}
sft_dir = {r: os.path.join(args.out, r, "coldstart") for r in args.regimes}  # writes coldstart/sft/
arms = [(f"lambda={lam:g}", lam, "oracle") for lam in args.lambdas]
if args.genrm:
    arms.append(("lambda=1 learned GenRM", 1.0, args.genrm))
common = ["--task", "rl", "--steps", str(args.steps), "--eval-every", str(args.eval_every),
          "--eval-prompts", str(args.eval_prompts)]
jobs, sft_job = [], {}
for r in sorted(args.regimes, key=lambda r: -sft_steps[r]):  # the longest cold start first
    if not any(m.get("eval") == "after_sft" for m in records(sft_dir[r], "sft")):
        sft_job[r] = len(jobs)
        jobs.append((["--task", "sft", "--toy-regime", r, "--sft-steps", str(sft_steps[r]), "--eval-prompts",
                      str(args.eval_prompts), "--out", sft_dir[r], "--resume"], sft_dir[r] + ".log", None))
n_sft = len(jobs)
for regime in args.regimes:
    for name, lam, judge in arms:
        for seed in args.seeds:
            out = arm_dir(regime, name, seed)
            if not finished(out, args.steps):
                shutil.rmtree(out, ignore_errors=True)  # a killed arm restarts clean
                jobs.append((common + ["--model", os.path.join(sft_dir[regime], "sft", "hf"), "--toy-regime", regime,
                                       "--fapo-lambda", str(lam), "--genrm", judge, "--seed", str(seed), "--out", out],
                             out + ".log", sft_job.get(regime)))
print(f"{n_sft} SFT cold starts ({', '.join(f'{r}: {sft_steps[r]} steps' for r in args.regimes)}), then "
      f"{len(jobs) - n_sft} RL runs, {args.jobs} at a time ...", flush=True)
pool(jobs)
elapsed = time.time() - t0
timing = f"{elapsed / 60:.1f} min in all with --jobs {args.jobs}"


# ---- tables, plots and the claims, per regime ----

def fmt(vals, digits=3):
    m = statistics.mean(vals)
    return f"{m:.{digits}f} ± {statistics.stdev(vals):.{digits}f}" if len(vals) > 1 else f"{m:.{digits}f}"


def gather(regime):
    curves = {}  # arm -> metric -> step -> [values over seeds]
    for name, _, _ in arms:
        for seed in args.seeds:
            for m in records(arm_dir(regime, name, seed)):
                if "eval" not in m:
                    continue
                for key in ("acc", "flawed_ratio", "response_length"):
                    val = next(v for k, v in m.items() if k.startswith(f"eval_{key}"))
                    curves.setdefault(name, {}).setdefault(key, {}).setdefault(m.get("step", 0), []).append(val)
    return curves


def claims(curves):
    """The paper's claims, as the issue states them: (label, passed, numbers) for lambda 0 vs lambda 1."""
    if not {"lambda=0", "lambda=1"} <= set(curves):
        return []
    base, fapo = curves["lambda=0"], curves["lambda=1"]
    first, last = min(base["acc"]), max(base["acc"])
    mean = lambda c, k, s: statistics.mean(c[k][s])  # noqa: E731
    f0, fb, ff = mean(base, "flawed_ratio", first), mean(base, "flawed_ratio", last), mean(fapo, "flawed_ratio", last)
    ab, af = mean(base, "acc", last), mean(fapo, "acc", last)
    return [
        ("baseline flawed ratio flat (end within 20% of start)", abs(fb - f0) <= 0.2 * f0,
         f"{f0:.3f} -> {fb:.3f} ({(fb - f0) / f0:+.0%})"),
        ("FAPO flawed ratio <= 1/4 of the baseline's", ff <= 0.25 * fb, f"{ff:.3f} vs {fb:.3f} ({ff / fb:.2f}x)"),
        ("FAPO accuracy no more than one point below the baseline's", af >= ab - 0.01,
         f"{af:.3f} vs {ab:.3f} ({(af - ab) * 100:+.1f} points)"),
    ]


def plot(regime, curves, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in zip(axes, ("acc", "flawed_ratio", "response_length"),
                              ("accuracy (avg@4)", "flawed positives / correct (oracle)", "response length (tokens)")):
        for name in curves:
            steps = sorted(curves[name][key])
            vals = [curves[name][key][s] for s in steps]
            ax.plot(steps, [statistics.mean(v) for v in vals], label=name, marker=".")
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(bottom=0)
    axes[0].legend()
    fig.suptitle(f"FAPO vs baseline, toy task, {regime} regime (mean, min-max band over {len(args.seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


verdicts = {}
for regime in args.regimes:
    curves = gather(regime)
    sft = next(m for m in records(sft_dir[regime], "sft") if m.get("eval") == "after_sft")
    lines = [f"Toy task, {regime} regime: SFT cold start ({sft_steps[regime]} steps) then {args.steps} RL steps; seeds "
             f"{args.seeds}; evaluation every {args.eval_every} steps on {args.eval_prompts} held-out prompts x 4 samples "
             "at temperature 1; flawed ratio = oracle-flagged / correct; mean ± std over seeds.", "",
             "| arm | acc start | acc end | flawed ratio start | flawed ratio end | length start | length end |",
             "|---|---|---|---|---|---|---|"]
    for name in curves:
        c = curves[name]
        first, last = min(c["acc"]), max(c["acc"])
        lines.append(f"| {name} | " + " | ".join(fmt(c[k][s], 2 if k == "response_length" else 3)
                                                   for k in ("acc", "flawed_ratio", "response_length")
                                                   for s in (first, last)) + " |")
    verdicts[regime] = claims(curves)
    lines += ["", "Claims (lambda 0 vs lambda 1, means over seeds):", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {label}: {nums}" for label, ok, nums in verdicts[regime]]
    table = "\n".join(lines)
    with open(os.path.join(args.report, f"compare_{regime}.md"), "w") as f:
        f.write(table + f"\n\n(after SFT: acc@4 {sft['eval_acc@4']:.3f}, flawed ratio {sft['eval_flawed_ratio']:.3f}; "
                        f"{timing})\n")
    print(f"\n== {regime} ==\n{table}")
    plot(regime, curves, os.path.join(args.report, f"compare_{regime}.png"))

print("\nWhat reproduced" + (" (a smoke run: too short to mean anything)" if args.quick else "") + ":")
for regime, vs in verdicts.items():
    for label, ok, nums in vs:
        print(f"  [{regime}] {'PASS' if ok else 'FAIL'}: {label}: {nums}")
print(f"({timing})")
