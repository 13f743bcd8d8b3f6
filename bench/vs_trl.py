"""bench/vs_trl.py -- our trainer against TRL's GRPOTrainer: the same work, timed side by side, and one identical batch
checked number for number.

TRL is what most people would use instead. It is needed by this script only (the trainer never imports it):
    python -m venv --system-site-packages .venv-trl && .venv-trl/bin/pip install trl==1.16.0
    .venv-trl/bin/python bench/vs_trl.py --model OUT/start/sft/hf               # ~16 min on 2 cores
    .venv-trl/bin/python bench/vs_trl.py --model OUT/start/sft/hf --check-only  # ~2 min
OUT/start/sft/hf is bench/realmodel.py's start (SmolLM2 after its cold start): a model that earns some reward, so
groups have non-zero advantages. Raw SmolLM2 earns none: every advantage would be 0 and neither side would train
(our side would skip every rollout), and the check refuses a batch without signal.

1. The identical batch (--check-only does only this). TRL's own pipeline runs on prompts from arith.py, with its
   generation replaced by completions from our sampler; its reward function is ours (fapo.score_rollouts with the
   exact equation checker, lambda 1). Then, from TRL's padded batch, our side computes the same rewards,
   grpo.group_advantages and grpo.policy_update's loss and gradient on the same model. Compared: rewards,
   advantages (at TRL's std epsilon 1e-4, and at our default 1e-6), the loss, every parameter's gradient.
2. The speed: the same work on both -- the same model, arith prompts, G, max response length, temperature 1,
   one optimizer step per batch (micro-batches of 8, gradient accumulation on TRL's side), no KL, token-level
   loss (TRL loss_type="dapo", epsilon 0.2 / epsilon_high 0.28, delta 10 = our dual clip c, scale_rewards
   "group", beta 0, num_iterations 1; fp32, no gradient checkpointing on both). Runs alternate (ours, TRL, ours,
   TRL, ...: one sitting, so drift in the machine hits both); each run is its own process with the same threads.
   Reported: seconds per step (the first step of each run is warm-up and left out), generated tokens per second,
   and where the step goes (generation vs the rest: scoring and the update). Ours runs as users run it
   (`python train.py ...`, its per-step log), once more with --skip-zero-advantage 0 (every rollout through the
   update, as TRL does) so the two speed-ups are told apart.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORK = dict(prompts=4, rollouts=8, max_response_len=128, lr=1e-5, micro_batch=8, steps=3)  # steps: 1 warm-up + 2

ap = argparse.ArgumentParser(prog="bench/vs_trl.py", description=__doc__.split("\n\n")[0].split("-- ")[1])
ap.add_argument("--model", required=True, help="an HF model dir (SmolLM2: python bench/gguf_to_hf.py --out DIR)")
ap.add_argument("--rounds", type=int, default=2, help="ours/TRL pairs of runs")
ap.add_argument("--steps", type=int, default=WORK["steps"], help="steps per run (the first is warm-up)")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--check-only", action="store_true", help="only the identical-batch comparison")
ap.add_argument("--json", default=None, help="also write the figures here")
ap.add_argument("--role", default=None, choices=["trl", "check"], help=argparse.SUPPRESS)  # one run, in a subprocess
ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
args = ap.parse_args()
WORK["steps"] = args.steps


# ---- shared: the prompts and the reward ----


def rows(n):
    import arith
    return arith.task_rows(0)[0][:n]


def fapo_rewards(texts, ground_truths, problems):
    """FAPO's reward (lambda 1) with the exact equation checker as the GenRM: our code path, for both sides."""
    import arith
    import fapo
    import genrm
    correct = fapo.verify_rollouts(texts, ground_truths)
    judging = fapo.request_verdicts(correct, texts, ground_truths, problems, genrm.CheckerJudge(arith.check))
    return fapo.score_rollouts(judging, lam=1.0).rewards


def trl_trainer(model, tok, train_rows, out_dir, grad_accum, max_steps):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def reward(completions, ground_truth, problem, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return fapo_rewards(texts, ground_truth, problem)
    ds = Dataset.from_list([{"prompt": r.prompt, "ground_truth": str(r.ground_truth),
                             "problem": r.extra_info["question"]} for r in train_rows])
    cfg = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=WORK["micro_batch"], gradient_accumulation_steps=grad_accum,
        num_generations=WORK["rollouts"], max_completion_length=WORK["max_response_len"], temperature=1.0, top_p=1.0,
        top_k=0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, delta=10.0, scale_rewards="group", beta=0.0,
        num_iterations=1, learning_rate=WORK["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.1,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, bf16=False, fp16=False, gradient_checkpointing=False,
        use_cpu=True, max_steps=max_steps, logging_steps=1, report_to=[], save_strategy="no", seed=0,
        dataloader_num_workers=0, disable_tqdm=True, log_completions=False, mask_truncated_completions=False)
    return GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok)


def load(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tok


# ---- 1. the identical batch ----


def check():
    import torch
    import grpo
    import sampler
    from infra import fsdp

    class Snapshot:  # an "optimizer" that keeps the gradient policy_update hands it
        def __init__(self, model):
            self.model, self.grads = model, None

        def step(self):
            self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}

        def zero_grad(self, set_to_none=True):
            self.model.zero_grad(set_to_none=True)

    model, tok = load(args.model)
    model.train()  # SmolLM2 has no dropout: train mode changes nothing, and TRL reads it as "train"
    G, n_prompts = 8, 4
    batch_rows = rows(n_prompts)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(model, tok, batch_rows, tmp, grad_accum=1, max_steps=1)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; the loss reads it
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ours = {}

    def our_completions(prompt_ids, *a, **k):  # TRL's generation replaced by our sampler on TRL's prompt ids
        with torch.no_grad():
            comps = sampler.generate(model, [list(p) for p in prompt_ids], WORK["max_response_len"],
                                     temperature=1.0, eos_token_id=eos, seed=3)
        ours["comps"] = comps
        return [c.tokens for c in comps], None
    trainer._generate_single_turn = our_completions
    inputs = [{"prompt": r.prompt, "ground_truth": str(r.ground_truth), "problem": r.extra_info["question"]}
              for r in batch_rows for _ in range(G)]
    out = trainer._generate_and_score_completions(inputs)
    model.zero_grad(set_to_none=True)
    # TRL's loss in micro-batches of 8 rows, as its training loop splits a generation batch: the "dapo" loss divides
    # by the whole batch's token count (num_items_in_batch), so the micro-batch losses add up to the batch's
    n = len(inputs)
    loss_trl = 0.0
    for i in range(0, n, WORK["micro_batch"]):
        part = {k: v[i:i + WORK["micro_batch"]] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
                for k, v in out.items()}
        loss = trainer.compute_loss(model, part)
        loss.backward()
        loss_trl += loss.item()
    grads_trl = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    # our side, from TRL's padded batch: prompts left-padded, completions right-padded, both with masks
    prompts = [ids[m.bool()].tolist() for ids, m in zip(out["prompt_ids"], out["prompt_mask"])]
    responses = [ids[m.bool()].tolist() for ids, m in zip(out["completion_ids"], out["completion_mask"])]
    assert responses == [c.tokens for c in ours["comps"]], "TRL's batch holds other completions than ours"
    texts = [tok.decode(r, skip_special_tokens=True) for r in responses]
    rewards = fapo_rewards(texts, [i["ground_truth"] for i in inputs], [i["problem"] for i in inputs])
    groups = [k // G for k in range(len(inputs))]
    adv_trl = out["advantages"].float()
    adv = grpo.group_advantages(torch.tensor(rewards), groups, eps=1e-4)  # TRL's epsilon
    adv_default = grpo.group_advantages(torch.tensor(rewards), groups)    # ours (1e-6, verl's)
    samples = [grpo.Sample(p, r, a) for p, r, a in zip(prompts, responses, adv.tolist())]
    snap = Snapshot(model)
    cfg = grpo.UpdateSettings(pad_id=tok.pad_token_id or 0, temperature=1.0, micro_batch=WORK["micro_batch"],
                              grad_clip=1e12)
    stats = grpo.policy_update(model, snap, samples, cfg, fsdp.World())  # a world of one, as `python train.py`
    fsdp.close()
    top = max(g.abs().max().item() for g in grads_trl.values())
    if top == 0:
        raise SystemExit(f"the batch has no signal (rewards {sorted(set(rewards))}: every group uniform); use a "
                         "model that earns some reward, e.g. bench/realmodel.py's start, OUT/start/sft/hf")
    gdiff = max((snap.grads[n] - g).abs().max().item() for n, g in grads_trl.items())
    flat = lambda d: torch.cat([v.flatten().double() for v in d.values()])  # noqa: E731
    cos = torch.nn.functional.cosine_similarity(flat(snap.grads), flat(grads_trl), dim=0).item()
    r_trl = out.get("rewards")
    res = {
        "rollouts": len(inputs), "groups": n_prompts, "tokens": sum(len(r) for r in responses),
        "rewards": rewards, "reward_counts": {v: rewards.count(v) for v in sorted(set(rewards))},
        "max_abs_diff_advantage_eps1e-4": (adv - adv_trl).abs().max().item(),
        "max_abs_diff_advantage_eps1e-6": (adv_default - adv_trl).abs().max().item(),
        "loss_ours": stats["loss"], "loss_trl": loss_trl, "abs_diff_loss": abs(stats["loss"] - loss_trl),
        "max_abs_grad": top, "max_abs_diff_grad": gdiff, "max_rel_diff_grad": gdiff / top, "grad_cosine": cos,
        "trl_rewards_logged": r_trl.tolist() if r_trl is not None else None,
    }
    return res


# ---- 2. the speed: one run per process ----


def trl_run():
    from transformers import TrainerCallback
    model, tok = load(args.model)
    grad_accum = WORK["prompts"] * WORK["rollouts"] // WORK["micro_batch"]
    steps, gen, toks = [], [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            steps.append(time.perf_counter() - self.t)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(model, tok, rows(WORK["prompts"] * WORK["steps"] * 4), tmp, grad_accum, WORK["steps"])
        inner = trainer._generate_single_turn

        def timed(prompt_ids, *a, **k):
            t = time.perf_counter()
            ids, lp = inner(prompt_ids, *a, **k)
            gen.append(time.perf_counter() - t)
            toks.append(sum(len(x) for x in ids))
            return ids, lp
        trainer._generate_single_turn = timed
        trainer.add_callback(Clock())
        trainer.train()
    assert len(gen) == len(steps), f"{len(gen)} generations for {len(steps)} steps: one per step expected"
    return {"step_s": steps, "gen_s": gen, "tokens": toks}


def ours_run(skip):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--model", args.model, "--data", "arith",
               "--test-data", "none", "--genrm", "oracle", "--fapo-lambda", "1", "--steps", str(WORK["steps"]),
               "--prompts-per-step", str(WORK["prompts"]), "--rollouts", str(WORK["rollouts"]),
               "--max-prompt-len", "256", "--max-response-len", str(WORK["max_response_len"]), "--overlong-buffer",
               "0", "--micro-batch", str(WORK["micro_batch"]), "--micro-batch-tokens", "0", "--mini-batch-prompts", "0", "--lr", str(WORK["lr"]), "--warmup", "1",
               "--weight-decay", "0.1", "--save-every", "0", "--dump-prompts", "0", "--skip-zero-advantage",
               str(int(skip)), "--no-progress", "--out", tmp]
        r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"train.py failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        recs = [json.loads(line) for line in open(os.path.join(tmp, "rl", "metrics.jsonl")) if line.strip()]
    recs = [m for m in recs if "t_sample" in m]
    return {"step_s": [m["t_sample"] + m["t_judge"] + m["t_train"] for m in recs],
            "gen_s": [m["t_sample"] for m in recs],
            "tokens": [m["response_length"] * WORK["prompts"] * WORK["rollouts"] for m in recs]}


def child(role):
    """Run one role in a fresh process (its own threads, nothing cached), return its result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--steps", str(args.steps), "--threads",
           str(args.threads), "--role", role, "--result", path]
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if r.returncode:
        raise SystemExit(f"bench/vs_trl.py --role {role} failed ({r.returncode})")
    with open(path) as f:
        res = json.load(f)
    os.unlink(path)
    return res


def summary(name, runs):
    """Warm-up steps dropped; medians over the remaining steps of every run."""
    step = [s for r in runs for s in r["step_s"][1:]]
    gen = [s for r in runs for s in r["gen_s"][1:]]
    tok = [t for r in runs for t in r["tokens"][1:]]
    return {"name": name, "steps": len(step), "s_per_step": statistics.median(step), "gen_s": statistics.median(gen),
            "rest_s": statistics.median(s - g for s, g in zip(step, gen)),
            "tokens_per_s": sum(tok) / sum(step), "gen_tokens_per_s": sum(tok) / sum(gen)}


def main():
    if args.role:
        res = check() if args.role == "check" else trl_run()
        with open(args.result, "w") as f:
            json.dump(res, f)
        return
    print("work: " + json.dumps(WORK), flush=True)
    res = {"work": WORK, "check": child("check")}
    c = res["check"]
    print(f"identical batch ({c['rollouts']} rollouts in {c['groups']} groups, {c['tokens']} tokens; rewards "
          f"{c['reward_counts']}):\n"
          f"  advantages: max |ours - TRL| {c['max_abs_diff_advantage_eps1e-4']:.2e} at TRL's std epsilon 1e-4 "
          f"({c['max_abs_diff_advantage_eps1e-6']:.2e} at our default 1e-6)\n"
          f"  loss: ours {c['loss_ours']:.8f}, TRL {c['loss_trl']:.8f}, |diff| {c['abs_diff_loss']:.2e}\n"
          f"  gradient: max |diff| {c['max_abs_diff_grad']:.2e} (max |grad| {c['max_abs_grad']:.2e}, relative "
          f"{c['max_rel_diff_grad']:.2e}), cosine {c['grad_cosine']:.8f}", flush=True)
    if not args.check_only:
        runs = {"ours": [], "trl": []}
        for k in range(args.rounds):  # interleaved: ours, TRL, ours, TRL, ...
            for name in ("ours", "trl"):
                t = time.time()
                runs[name].append(ours_run(skip=True) if name == "ours" else child("trl"))
                print(f"  round {k + 1}: {name} {time.time() - t:.0f} s, steps "
                      f"{[round(s, 1) for s in runs[name][-1]['step_s']]}", flush=True)
        t = time.time()
        runs["ours_noskip"] = [ours_run(skip=False)]
        print(f"  ours, --skip-zero-advantage 0: {time.time() - t:.0f} s, steps "
              f"{[round(s, 1) for s in runs['ours_noskip'][-1]['step_s']]}", flush=True)
        rows_ = [summary("ours", runs["ours"]), summary("ours, --skip-zero-advantage 0", runs["ours_noskip"]),
                 summary("TRL GRPOTrainer", runs["trl"])]
        res.update(runs=runs, summary=rows_)
        trl = rows_[-1]
        print(f"\n| trainer | s / step | generation s | rest s (score + update) | generated tokens / s of the step "
              f"| speed x TRL (per step) | x TRL (tokens / s) |\n|---|---|---|---|---|---|---|")
        for r in rows_:
            print(f"| {r['name']} | {r['s_per_step']:.1f} | {r['gen_s']:.1f} | {r['rest_s']:.1f} | "
                  f"{r['tokens_per_s']:.1f} | {trl['s_per_step'] / r['s_per_step']:.2f} | "
                  f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
