"""bench/plot.py -- one or more metrics.jsonl files (train.py's log) into one PNG of training curves.

    python bench/plot.py out/rl/rl/metrics.jsonl [more.jsonl ...] -o plot.png [--labels a b] [--smooth 5]
    python -m bench.plot ...                                      (the same, from the repository root)

Panels over steps: reward, accuracy (`acc` per step, `eval_acc@N` at evaluations), flawed ratio (`flawed_ratio`,
`eval_flawed_ratio`), response length, entropy, grad norm, and the sampler/trainer gap when logged. Per-step
values are lines, evaluations are dots on a dashed line of the same colour; each run has one colour, labelled
by its directory (the last two parts, e.g. `fapo/rl`) or --labels. Keys a run lacks are skipped (a `--task
genrm` run has no `acc`) and panels no run has are left out. matplotlib is an optional dependency:
pip install matplotlib.
"""
import argparse
import json
import math
import os
import sys

# (title, per-step key, evaluation key or prefix): a prefix ending in "@" matches eval_acc@4, eval_acc@16, ...
PANELS = [
    ("reward", "reward", None),
    ("accuracy", "acc", "eval_acc@"),
    ("flawed positives / correct", "flawed_ratio", "eval_flawed_ratio"),
    ("response length (tokens)", "response_length", "eval_response_length"),
    ("entropy", "entropy", None),
    ("grad norm", "grad_norm", None),
    ("sampler/trainer gap: k3 KL per sequence", "gap_kl", None),
]


# ---- reading metrics ----

def load(path):
    """The records of one metrics.jsonl, in file order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(records, key, evals=False):
    """{key: (steps, values)} for a per-step key, or for evaluation keys (`key` exact, or a prefix ending in
    "@"). An evaluation without a step (the "start" eval, "after_sft") sits at the last step seen before it.
    Non-finite values (a skipped update's grad norm) are dropped."""
    out, step = {}, 0
    for m in records:
        is_eval = "eval" in m
        step = m.get("step", step)
        if is_eval != evals:
            continue
        names = [k for k in m if k == key or (key.endswith("@") and k.startswith(key) and "/" not in k)]
        for k in names:
            v = m[k]
            if isinstance(v, (int, float)) and math.isfinite(v):
                xs, ys = out.setdefault(k, ([], []))
                xs.append(step)
                ys.append(float(v))
    return out


def smooth(ys, window):
    """Trailing running mean over `window` points (1: unchanged)."""
    out = []
    for i in range(len(ys)):
        part = ys[max(0, i - window + 1):i + 1]
        out.append(sum(part) / len(part))
    return out


def run_label(path):
    parts = os.path.normpath(os.path.dirname(os.path.abspath(path))).split(os.sep)
    return "/".join(parts[-2:])


# ---- drawing ----

def plot(paths, out, labels=None, window=1):
    """Write the PNG `out` for the metrics files `paths`; returns the titles of the panels drawn."""
    import matplotlib  # optional: imported only here
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state, works headless

    labels = labels or [run_label(p) for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} files")
    runs = [load(p) for p in paths]
    # only the panels some run has data for
    panels = [(t, k, e) for t, k, e in PANELS
              if any(series(r, k) or (e and series(r, e, evals=True)) for r in runs)]
    if not panels:
        raise ValueError(f"no known metric in {paths}: expected some of {[k for _, k, _ in PANELS]}")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, key, eval_key) in zip(axes.flat, panels):
        for i, (records, label) in enumerate(zip(runs, labels)):
            colour = colours[i % len(colours)]
            for xs, ys in series(records, key).values():
                ax.plot(xs, smooth(ys, window), color=colour, lw=1.2, label=label)
            evals = series(records, eval_key, evals=True) if eval_key else {}
            for k, (xs, ys) in evals.items():  # name the key only when there are several (eval_acc@4, @16)
                ax.plot(xs, ys, "o--", color=colour, ms=4, lw=0.8, label=f"{label} {k if len(evals) > 1 else 'eval'}")
        ax.set_title(title + (" (dots: eval)" if eval_key else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return [t for t, _, _ in panels]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("metrics", nargs="+", help="metrics.jsonl files, one per run")
    ap.add_argument("-o", "--out", default="plot.png")
    ap.add_argument("--labels", nargs="+", default=None, help="one per file (default: the run's directory)")
    ap.add_argument("--smooth", type=int, default=1, help="running mean over this many steps (evals unsmoothed)")
    args = ap.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("bench/plot.py needs matplotlib: pip install matplotlib")
    drawn = plot(args.metrics, args.out, args.labels, max(1, args.smooth))
    print(f"wrote {args.out}: {', '.join(drawn)}")


if __name__ == "__main__":
    main()
