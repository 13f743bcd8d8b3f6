"""infra/runlog.py -- what a run leaves to read: metrics.jsonl, the progress bar, rollout dumps, the closing table.

    log = Logger(phase_dir, world, total, start, "rl", no_progress=False, wandb="", config={})
    log.log({"step": 3, "reward": 0.25, ...})   # one JSON object per step or evaluation (rank 0 writes)
    dump_rollouts(path, records)                 # OUT/dumps/NAME.jsonl (bench/flawed.py shows the flawed positives)
    print(summary(first, last, seconds))         # the closing "metric before after" table

Why apart (skip on first read): logging is bookkeeping. On resume metrics.jsonl is cut back to the
checkpoint's step, so every step appears once; W&B (--wandb PROJECT) is an optional mirror.
"""
import json
import os
import sys

import torch

from infra.checkpoint import write_atomic


class Logger:
    """metrics.jsonl (one object per step or eval) and a tqdm bar, on rank 0 only. On resume the file is
    cut back to the checkpoint's step, so every step appears once."""

    def __init__(self, out_dir, world, total, start, desc, no_progress=False, wandb="", config=None):
        self.main, self.path, self.bar = world.main, os.path.join(out_dir, "metrics.jsonl"), None
        os.makedirs(out_dir, exist_ok=True)
        self.records = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.records = [json.loads(line) for line in f if line.strip()]
            self.records = [m for m in self.records if m.get("step", 0) <= start]
            if self.main:
                write_atomic(self.path, "".join(json.dumps(m) + "\n" for m in self.records))
        if world.main and not no_progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, file=sys.stdout)
        self.wandb, self.last_step = None, start  # optional mirror to Weights & Biases (--wandb PROJECT)
        if wandb and world.main:  # rank 0 only: one W&B run per phase, grouped by the run directory
            try:
                import wandb as wandb_module  # WANDB_MODE=offline needs no network
            except ImportError:
                print("--wandb: the wandb package is not installed (pip install wandb); metrics.jsonl only", flush=True)
            else:
                run_dir = os.path.dirname(os.path.abspath(out_dir))
                self.wandb = wandb_module.init(project=wandb, dir=out_dir, group=os.path.basename(run_dir),
                                               name=f"{os.path.basename(run_dir)}/{desc}", job_type=desc,
                                               config=json.loads(json.dumps(config or {}, default=str)))

    def find_eval(self, tag):
        return next((m for m in self.records if m.get("eval") == tag), None)

    def last_step_record(self):
        return next((m for m in reversed(self.records) if "eval" not in m), None)

    def log(self, m, show=("reward", "acc", "flawed_ratio", "unparseable", "judge_failed", "groups_unjudged", "loss",
                       "verdict_acc")):
        self.records.append(m)
        if self.wandb is not None:  # numbers only ("eval": "start" is a tag); evals at their step
            self.last_step = m.get("step", self.last_step)
            self.wandb.log({k: v for k, v in m.items() if isinstance(v, (int, float)) and k != "step"},
                           step=self.last_step)
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(m) + "\n")
        if self.main and "eval" in m:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()), flush=True)
        elif self.bar is not None:
            self.bar.set_postfix({k: f"{m[k]:.3f}" for k in show if k in m})
            self.bar.update(1)
        return m

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def dump_rollouts(path, records):
    """One JSON object per rollout, written atomically (rank 0 calls it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def peak_memory(world):
    """The step's peak GPU memory over ranks (GiB), then reset; nothing on CPU."""
    if world.device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(world.device) / 2**30
    torch.cuda.reset_peak_memory_stats(world.device)
    return {"peak_gib": world.max([peak])[0]}


TABLE_SKIP = ("eval_unparseable", "eval_judge_failed")  # rates of the judge, not of the policy: in metrics.jsonl


def summary(before, after, seconds, last_step=None):
    """The closing table: each pooled eval metric before and after. With nothing evaluated (--test-data none)
    it shows the last step's training metrics instead, so a run always ends by saying something."""
    rows = [k for k in after or {} if k.startswith("eval_") and "/" not in k and not k.startswith("eval_n")
            and k not in TABLE_SKIP]
    if rows:
        lines = [f"\n{'metric':<28}{'before':>10}{'after':>10}"]
        lines += [f"{k[5:]:<28}{(before or {}).get(k, float('nan')):>10.3f}{after[k]:>10.3f}" for k in rows]
    else:
        shown = [k for k in ("reward", "acc", "flawed_ratio", "response_length", "loss", "verdict_acc", "grad_norm")
                 if k in (last_step or {})]
        lines = [f"\nnothing evaluated (no test data); the last step ({(last_step or {}).get('step', '-')}):"]
        lines += [f"{k:<28}{last_step[k]:>10.3f}" for k in shown]
    return "\n".join(lines + [f"({seconds:.0f} s)"])
