"""bench/step_functions.py -- which of the project's functions one RL step runs through, by file.

The demo (the toy preset) for two RL steps, with sys.setprofile on during the second `train.rl_step` (its model
has rewards to score and verdicts to ask for). Counted: every function or method defined in the project's files
(tests and bench excluded) that is called while the step runs; comprehensions and lambdas are not functions.

    python bench/step_functions.py              # the count, the files, then every function
    python bench/step_functions.py --root DIR   # another checkout (a before / after comparison)
"""
import argparse
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split("-- ")[1])
    ap.add_argument("--root", default=ROOT, help="the checkout to measure")
    ap.add_argument("--out", default="/tmp/step_functions", help="the demo run's output dir")
    args = ap.parse_args(argv)
    root = os.path.abspath(args.root)
    sys.path.insert(0, root)
    import train  # noqa: E402  (the checkout's own)
    seen = set()

    def record(frame, event, _arg):
        path = frame.f_code.co_filename
        if event == "call" and path.startswith(root + os.sep) and not path.startswith((
                os.path.join(root, "tests"), os.path.join(root, "bench"))):
            seen.add((os.path.relpath(path, root), frame.f_code.co_qualname))

    step_fn = train.PHASES["rl"][0]

    def profiled(step, run):
        if step != 1:
            return step_fn(step, run)
        sys.setprofile(record)
        try:
            return step_fn(step, run)
        finally:
            sys.setprofile(None)

    train.PHASES["rl"] = (profiled,) + train.PHASES["rl"][1:]
    train.main(["--out", args.out, "--overwrite", "--steps", "2", "--no-progress", "--eval-prompts", "8"])
    named = sorted((f, name) for f, name in seen if "<" not in name)  # no <listcomp>, <genexpr>, <lambda>
    files = collections.Counter(f for f, _ in named)
    print(f"\n{len(named)} functions in {len(files)} files: " + ", ".join(f"{f} {n}" for f, n in files.most_common()))
    for f, name in named:
        print(f"  {f}: {name}")


if __name__ == "__main__":
    main()
