"""bench/flawed.py -- read the flawed positives of a rollout dump next to the GenRM's critiques.

    python bench/flawed.py out/rl/dumps/rl_step50.jsonl [--n 5] [--width 160]   # train.py --dump-every 50
    python bench/flawed.py out/rl/dumps/eval_step100.jsonl                       # every evaluation dumps

A flawed positive is a rollout whose final answer is right (`correct`) but whose reasoning the GenRM flagged
(`first_error` is a step index, not null = not judged, not -1 = no error): what FAPO penalises, and what the
paper's case studies show. Each is printed as a header (phase, step, reward, length, source, answer), the
prompt, then the response (its paragraphs numbered from 0 as the GenRM saw them, >> on the flagged one) and
the critique in two columns wrapped to the terminal's width, or one after the other when the terminal is
narrower than --min-split columns.

The dump (train.py writes OUT/dumps/rl_stepN.jsonl and OUT/dumps/eval_TAG.jsonl, one JSON object per
rollout) has: phase, step, prompt, response, reward, correct,
first_error, critique, length, finish_reason, data_source, ground_truth.
"""
import argparse
import itertools
import json
import os
import shutil
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fapo import split_steps  # noqa: E402  the GenRM's paragraphs, so its index can be pointed at


# ---- reading ----

def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def is_flawed_positive(r):
    return bool(r.get("correct")) and r.get("first_error") not in (None, -1)


# ---- layout ----

def wrap(text, width):
    """Lines of `text` wrapped to `width`, keeping its own line breaks (reasoning steps are lines)."""
    out = []
    for line in (text or "").splitlines() or [""]:
        out += textwrap.wrap(line, width, replace_whitespace=False, drop_whitespace=True) or [""]
    return out


def numbered(response, index):
    """The response as the GenRM saw it: paragraphs numbered from 0, the flagged one marked with >>."""
    return "\n\n".join(f"{'>>' if i == index else ''}[{i}] {p}" for i, p in enumerate(split_steps(response or "")))


def columns(left, right, width, titles=("response", "critique")):
    """Two texts side by side in `width` characters: left | right, each column wrapped on its own."""
    col = (width - 3) // 2
    a, b = wrap(left, col), wrap(right, col)
    head = [f"{titles[0]:<{col}} | {titles[1]}", f"{'-' * col}-+-{'-' * col}"]
    return head + [f"{x:<{col}} | {y}".rstrip() for x, y in itertools.zip_longest(a, b, fillvalue="")]


def show(r, width, min_split=100):
    """The lines that present one rollout."""
    head = (f"== {r.get('phase', '?')} step {r.get('step', '?')}, reward {r.get('reward', float('nan')):g}, "
            f"{r.get('length', '?')} tokens ({r.get('finish_reason', '?')}), {r.get('data_source', '')}, "
            f"answer {r.get('ground_truth', '?')}; GenRM: first error in paragraph {r.get('first_error')} ==")
    lines = wrap(head, width)
    lines += ["prompt:"] + ["  " + x for x in wrap(r.get("prompt", ""), width - 2)] + [""]
    response, critique = numbered(r.get("response", ""), r.get("first_error")), r.get("critique") or "(no text)"
    if width >= min_split:
        lines += columns(response, critique, width)
    else:  # too narrow for two readable columns
        for title, text in (("response", response), ("critique", critique)):
            lines += [f"{title}:"] + [("  " + x).rstrip() for x in wrap(text, width - 2)] + [""]
    return lines + [""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dump", help="a rollout dump (.jsonl) written by train.py")
    ap.add_argument("--n", type=int, default=5, help="how many flawed positives to show (0: all)")
    ap.add_argument("--width", type=int, default=0, help="columns (default: the terminal's)")
    ap.add_argument("--min-split", type=int, default=100, help="narrower than this: one column")
    args = ap.parse_args(argv)
    width = args.width or shutil.get_terminal_size((120, 24)).columns
    width = max(width, 20)
    rows = load(args.dump)
    correct = sum(bool(r.get("correct")) for r in rows)
    flawed = [r for r in rows if is_flawed_positive(r)]
    shown = flawed if args.n <= 0 else flawed[:args.n]
    summary = (f"{args.dump}: {len(rows)} rollouts, {correct} correct, {len(flawed)} flawed positives "
               f"({len(flawed) / max(correct, 1):.0%} of correct); showing {len(shown)}")
    print("\n".join(wrap(summary, width)) + "\n")
    for r in shown:
        print("\n".join(show(r, width, args.min_split)))


if __name__ == "__main__":
    main()
