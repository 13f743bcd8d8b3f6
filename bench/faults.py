"""bench/faults.py -- kill -9 a toy run at random instants, resume it until it finishes, and compare its final
weights with an uninterrupted run's, bit for bit.

    python bench/faults.py --nproc 1 --n 20
    python bench/faults.py --nproc 2 --n 20      # torchrun and both workers are killed at once, like a lost node

The run is a tiny demo (SFT cold start, then RL; a checkpoint every step, an HF export every 2): a kill
lands in training, sampling, evaluation, a save or an export. Kill times are drawn (seeded) uniformly over
the uninterrupted run's time after its set-up (imports and rendezvous, where a kill can touch no file);
a first launch that finishes before its kill is drawn again (every run is killed at least once); each
resumed launch is killed again with probability --p-again (at most --max-kills per run). Prints one line
per run, then kills, resumes, bit-identical finals, and the newest complete checkpoint at each kill.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["--sft-steps", "6", "--sft-batch", "16", "--steps", "4", "--prompts-per-step", "4", "--rollouts", "4",
       "--test-data", "none", "--save-every", "1", "--export-every", "2", "--no-progress", "--max-response-len", "24",
       "--lr", "1e-2", "--sft-lr", "1e-2", "--warmup", "1", "--sft-warmup", "1", "--debug"]  # tracebacks from every rank


def launch(out, nproc, resume, kill_after=None):
    """Run the toy config into `out`; SIGKILL it and every process under it kill_after seconds after its
    set-up is done (rank 0 prints "config:" once the output directory is claimed: from then on a kill can
    hit the files). Returns (killed, returncode, seconds from the end of set-up to the exit)."""
    if nproc == 1:
        cmd = [sys.executable, "train.py"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port",
               str(29500 + random.randrange(3000)), "train.py"]
    cmd += RUN + ["--out", out] + (["--resume"] if resume else [])
    log = out + ".log"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(log, "w") as f:  # a file, not a pipe: nothing waits on a process that outlives its launcher
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=f, stderr=f)
    while proc.poll() is None and "config:" not in open(log).read():  # start-up: imports, rendezvous
        time.sleep(0.02)
    t_setup = time.time()
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)  # torchrun starts its workers in sessions of their own: kill each process
        proc.wait()
        return True, -9, time.time() - t_setup
    if proc.returncode != 0:
        with open(log) as f:
            raise SystemExit(f"{out}: the run failed (exit {proc.returncode}); see {log}\n{f.read()[-3000:]}")
    return False, 0, time.time() - t_setup


def kill_tree(pid):
    """SIGKILL a process and all its descendants (found first, then killed: a lost machine)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def progress(out):
    """Where a killed run stood: its newest complete checkpoint ("none", "sft N" or "rl N")."""
    for phase in ("rl", "sft"):
        try:
            with open(os.path.join(out, phase, "ckpt", "latest")) as f:
                return f"{phase} {int(f.read().strip().split('_')[1])}"
        except (OSError, ValueError, IndexError):
            continue
    return "none"


def final(out):
    """The RL phase's exported weights (raw bytes per tensor) and its logged steps."""
    from safetensors import safe_open
    with safe_open(os.path.join(out, "rl", "hf", "model.safetensors"), "pt") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}
    with open(os.path.join(out, "rl", "metrics.jsonl")) as f:
        steps = [m["step"] for m in map(json.loads, f) if "eval" not in m]
    return weights, steps


def same(a, b):
    import torch
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=1, choices=[1, 2])
    ap.add_argument("--n", type=int, default=20, help="killed runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--p-again", type=float, default=0.5, help="chance that a resumed launch is killed too")
    ap.add_argument("--max-kills", type=int, default=3)
    ap.add_argument("--out", default="", help="work dir (default: a temp dir, removed)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="fapo-faults-") as tmp:
        work = args.out or tmp
        _, _, duration = launch(os.path.join(work, "reference"), args.nproc, resume=False)
        want, want_steps = final(os.path.join(work, "reference"))
        print(f"uninterrupted: {duration:.1f} s after set-up, RL steps {want_steps}", flush=True)
        kills = resumes = identical = 0
        landed = []  # the newest complete checkpoint at each kill: where in the run the kills fell
        for i in range(args.n):
            out = os.path.join(work, f"run{i:03d}")
            killed, n_kills, n_resumes, resume = True, 0, 0, False
            while killed:
                again = n_kills == 0 or (n_kills < args.max_kills and rng.random() < args.p_again)
                at = rng.uniform(0.05, 1.0) * duration if again else None
                killed, _, seconds = launch(out, args.nproc, resume, at)
                if n_kills == 0 and not killed:  # finished before its kill: draw again, from scratch
                    shutil.rmtree(out)
                    killed = True
                    continue
                if killed:
                    landed.append(progress(out))
                n_kills += killed
                n_resumes += resume
                resume = True
            got, steps = final(out)
            ok = same(want, got) and steps == want_steps
            kills, resumes, identical = kills + n_kills, resumes + n_resumes, identical + ok
            print(f"run {i:2d}: {n_kills} kill(s), {n_resumes} resume(s), final weights "
                  f"{'bit-identical' if ok else 'DIFFERENT'}, RL steps logged {steps}", flush=True)
        print(f"\n{args.nproc} process(es): {args.n} runs, {kills} kills, {resumes} resumes, "
              f"{identical}/{args.n} bit-identical finals")
        print("newest complete checkpoint at each kill: " + ", ".join(
            f"{k} x{landed.count(k)}" for k in sorted(set(landed), key=lambda k: (k != "none", k[:3] == "rl ", k))))
        sys.exit(0 if identical == args.n else 1)


if __name__ == "__main__":
    main()
