"""train.py -- GRPO / FAPO training (with its SFT cold start, and GenRM training) under torchrun + FSDP2.

    torchrun train.py                               # the built-in demo: toy task, SFT, then FAPO RL
    torchrun --nproc_per_node=2 train.py            # the same on 2 processes (gloo on CPU)
    torchrun --nproc_per_node=8 train.py --preset fapo-7b --model DIR --data train.parquet \\
        --test-data test.parquet --genrm GENRM_DIR  # the paper's 7B run (docs/recipes.md)

One step of RL (paper, Algorithm 1, with verl's GRPO), rl_step below, in the order it runs:
    1. every rank takes its share of the step's prompts and samples G rollouts each (sampler.py),
    2. R_rule checks every answer; the GenRM is asked about the correct ones (fapo.py), then waited for,
    3. rewards: 1 - lambda for a flawed positive (fapo.py) -- or, with --task genrm, the critic's own
       reward (critic.py): the objective (PolicyObjective / CriticObjective) is chosen once, at setup,
    4. GRPO advantages per prompt group (a group never spans ranks), optional DAPO dynamic sampling,
    5. clipped policy-gradient updates with an exact *global* token-mean over micro-batches and ranks (grpo.py).
The same code path runs on 1 CPU, 1 GPU and N nodes: a single process is a world of size 1. Flags and
presets: config.py; held-out metrics: evaluate.py; building from flags, FSDP, checkpoints, logging: infra/.
Every run writes OUT/config.json, then one folder per phase: OUT/sft/ (the cold start) and OUT/rl/.
"""
import functools
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from transformers.utils import logging as hf_logging

import critic
import config
import data
import evaluate
import fapo
import genrm
import grpo
import sampler
from infra import build, checkpoint, fsdp
from infra.runlog import Logger, dump_rollouts, peak_memory, summary

hf_logging.disable_progress_bar()  # our own tqdm bar is the only one

# ---- what a run holds ----


@dataclass
class Run:
    """Everything a phase works with, built once by setup(); cfg is the parsed flags and nothing else."""
    cfg: object                 # argparse.Namespace from config.parse_config
    world: fsdp.World
    task: data.Task
    objective: object           # PolicyObjective (--task rl, sft) or CriticObjective (--task genrm)
    tokenizer: object
    pad_id: int                 # may equal EOS: masks come from positions, never from this id
    eos_ids: list               # every id that ends a rollout
    context: int                # the policy's context length
    dtype: torch.dtype          # compute dtype
    model: torch.nn.Module      # the policy (FSDP2-sharded)
    rows: list                  # train rows, their prompt ids, their problem texts (what a GenRM is shown)
    ids: list
    problems: list
    test: list                  # the same for the test rows
    test_ids: list
    test_problems: list
    judge: genrm.Judge | None   # judges the correct rollouts of an RL step (None: the baseline, or --task genrm)
    eval_judge: genrm.Judge | None  # judges at evaluation (the task's exact checker when it has one)
    repeats: dict = field(default_factory=dict)  # --eval-repeats, parsed
    optimizer: object = None    # the current phase's
    scheduler: object = None
    settings: grpo.UpdateSettings = None
    ref_model: torch.nn.Module | None = None  # the KL reference (only with --kl-coef > 0)

    def sample(self, prompt_ids, n, seed, temperature=None, top_p=None):
        """n completions per prompt from the gathered (unsharded) policy, with a generator of its own."""
        cfg = self.cfg
        gen = torch.Generator(device=self.world.device).manual_seed(seed)
        training = self.model.training
        self.model.eval()  # HF turns the KV cache off under gradient checkpointing in train mode
        with fsdp.gathered(self.model):  # every rank gathers, even one with nothing to sample (a collective)
            out = [] if not prompt_ids else sampler.generate(
                self.model, prompt_ids, cfg.max_response_len, temperature=cfg.temperature if temperature is None
                else temperature, top_p=cfg.top_p if top_p is None else top_p, top_k=cfg.top_k, eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id, n=n, generator=gen, max_tokens_in_flight=cfg.max_tokens_in_flight or None,
                context_len=self.context, fast={"auto": None, "on": True, "off": False}[cfg.fast_sampler])
        self.model.train(training)
        return out

    def decode(self, comps):
        return [self.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in comps]

    def dump(self, phase, step, rows, problems, texts, comps, scores, per_prompt, name):
        """OUT/dumps/NAME.jsonl: every rollout of rank 0's first --dump-prompts prompts (rollouts are
        prompt-major), with its reward, rule verdict, the GenRM's verdict and critique."""
        cfg = self.cfg
        if not self.world.main or not cfg.dump_prompts:
            return
        n = cfg.dump_prompts * per_prompt
        dump_rollouts(os.path.join(cfg.out, "dumps", f"{name}.jsonl"), [
            {"phase": phase, "step": step, "prompt": problems[k], "response": x, "reward": scores.rewards[k],
             "correct": bool(scores.correct[k]), "first_error": scores.first_error[k],
             "critique": scores.critiques[k] if scores.critiques else "", "length": len(c.tokens),
             "finish_reason": c.finish_reason, "data_source": r.data_source, "ground_truth": str(r.ground_truth)}
            for k, (r, x, c) in enumerate(zip(rows[:n], texts, comps))])


# ---- what the RL step trains toward: chosen once, at setup ----


class PolicyObjective:
    """--task rl: the policy answers problems. R_rule on every rollout, the GenRM asked about the correct ones,
    FAPO's reward (fapo.py); held out: accuracy and flawed ratio (evaluate.evaluate_policy)."""
    evaluate = staticmethod(evaluate.evaluate_policy)

    def __init__(self, cfg):
        self.cfg = cfg

    def problem(self, row):
        return data.problem_text(row)

    def request(self, truths, problems, texts, judge) -> fapo.Judging:
        """The one call site of fapo.request_verdicts (RL steps and evaluation): R_rule, then the correct ones."""
        correct = fapo.verify_rollouts(texts, truths)  # R_rule: the last boxed answer against the ground truth
        return fapo.request_verdicts(correct, texts, truths, problems, judge)

    def score(self, rows, texts, lengths, judging) -> fapo.Scores:
        c = self.cfg
        return fapo.score_rollouts(judging, c.fapo_lambda, lengths, c.max_response_len, c.overlong_buffer,
                                   c.overlong_factor)

    def rates(self, summed, step, world):
        if warning := fapo.check_verdicts(summed, step):
            world.say(warning)
        return fapo.rollout_metrics(summed)


class CriticObjective:
    """--task genrm: the GenRM is the policy. Its reward reads its own critique against the row's first wrong
    step (critic.py), with DAPO's overlong shaping as officially: nothing to verify or judge. Held out:
    ProcessBench's metrics (evaluate.evaluate_critic)."""
    evaluate = staticmethod(evaluate.evaluate_critic)

    def __init__(self, cfg):
        self.cfg = cfg

    def problem(self, row):
        return ""  # its prompt is the whole GenRM message: dumps leave it out

    def request(self, truths, problems, texts, judge) -> fapo.Judging:
        return fapo.Judging([False] * len(texts), [], [], [])  # nobody judged

    def score(self, rows, texts, lengths, judging) -> fapo.Scores:
        c = self.cfg
        rewards, sums, preds = critic.critic_rewards(rows, texts)
        right = [r > 0 for r in rewards]  # the flawed/clean verdict was right (outcome +1)
        rewards = [r + fapo.overlong_penalty(n, c.max_response_len, c.overlong_buffer, c.overlong_factor)
                   for r, n in zip(rewards, lengths)]
        return fapo.Scores(rewards, right, preds, sums, list(texts))

    def rates(self, summed, step, world):
        return critic.critic_batch_metrics(summed)


# ---- one RL step ----


def rl_step(step, run):
    """One GRPO step, in the order it runs: sample; R_rule on every rollout and the GenRM asked about the correct
    ones (wave by wave while decoding, with a served GenRM); wait for the verdicts; rewards; group advantages;
    the update. Returns the step's metrics (global)."""
    cfg, world, objective = run.cfg, run.world, run.objective
    idx = step_batch(len(run.rows), step, cfg, world)
    each = [i for i in idx for _ in range(cfg.rollouts)]  # the row of every rollout, prompt-major
    rows, problems = [run.rows[i] for i in each], [run.problems[i] for i in each]
    truths = [r.ground_truth for r in rows]
    t0 = time.time()
    with genrm.ready(run.judge) as judge:
        if judge is not None:  # a sampling GenRM draws from a per-step stream: a resumed run repeats it
            judge.reseed(derive_seed(cfg.seed, "judge", step, world.rank))
        comps, texts, judging = [], [], None
        for part, seed in waves(step, idx, run, judge):
            got = run.sample([run.ids[i] for i in part], cfg.rollouts, seed)
            new, k = run.decode(got), len(texts)
            sent = objective.request(truths[k:k + len(got)], problems[k:k + len(got)], new, judge)
            comps, texts, judging = comps + got, texts + new, sent if judging is None else judging + sent
        t1 = time.time()
        lengths = [len(c.tokens) for c in comps]
        judging, waited = fapo.wait_for_verdicts(judging, world, cfg.genrm_wait, step)  # an outage: waited through
        scores = objective.score(rows, texts, lengths, judging)
    t2 = time.time()
    if cfg.dump_every and (step + 1) % cfg.dump_every == 0:
        run.dump("rl", step + 1, rows, problems, texts, comps, scores, cfg.rollouts, f"rl_step{step + 1}")
    groups = [step * cfg.prompts_per_step + world.rank * len(idx) + k // cfg.rollouts for k in range(len(comps))]
    adv = grpo.group_advantages(torch.tensor(scores.rewards), groups, norm_by_std=bool(cfg.norm_adv_by_std)).tolist()
    samples = [grpo.Sample(run.ids[i], c.tokens, a, sampler_logp=c.logprobs) for i, c, a in zip(each, comps, adv)]
    # a rollout without a verdict never trains as clean: its whole group is held out (docs/departures.md)
    held = {k // cfg.rollouts for k, u in enumerate(scores.unjudged) if u}
    if cfg.dynamic_sampling:
        samples, dropped = dynamic_sampling(samples, scores.rewards, cfg.rollouts, world, held)
    else:
        samples, dropped = keep_groups(samples, [g for g in range(len(idx)) if g not in held], cfg.rollouts, world), 0
    update = grpo.policy_update(run.model, run.optimizer, samples, run.settings, world, run.ref_model) if samples else {}
    run.scheduler.step()
    t3 = time.time()
    m = step_metrics(step, scores, lengths, dropped, len(held), run)
    return {"step": step + 1, **m, "lr": run.scheduler.get_last_lr()[0], "t_sample": t1 - t0, "t_judge": t2 - t1,
            "t_train": t3 - t2, "judge_share": (t2 - t1) / max(t3 - t0, 1e-9), "genrm_wait_s": waited, **update}


def waves(step, idx, run, judge):
    """(prompt indices, sampling seed) of each wave: one wave, unless a served GenRM judges in the background;
    then --overlap-waves waves, each wave's correct rollouts sent off as soon as it is decoded, so judging
    overlaps decoding. Every rank makes the same number of waves (sampling gathers the model)."""
    seed = derive_seed(run.cfg.seed, "rollout", step, run.world.rank)
    n = run.cfg.overlap_waves if judge is not None and judge.background else 1
    if n <= 1:
        return [(idx, seed)]
    per_wave = math.ceil(len(idx) / n)
    return [(idx[w * per_wave:(w + 1) * per_wave], derive_seed(seed, w)) for w in range(n)]


def step_batch(n_rows, step, cfg, world):
    """This rank's row indices for a step (its slice of the step's prompts; resumable from the step)."""
    per_rank = cfg.prompts_per_step // world.size
    start = step * cfg.prompts_per_step + world.rank * per_rank
    return [epoch_order(cfg.seed, i // n_rows, n_rows)[i % n_rows] for i in range(start, start + per_rank)]


@functools.lru_cache(maxsize=2)
def epoch_order(seed, epoch, n):
    """The data order of one epoch: a seeded permutation, the same on every rank."""
    return random.Random(seed * 1_000_003 + epoch).sample(range(n), n)


def dynamic_sampling(samples, rewards, group, world, held=frozenset()):
    """DAPO: a group whose rewards are all equal carries no signal; drop it (no refill), then pad every rank
    to the same count with zero-weight samples (FSDP needs equal pass counts). Groups in `held` (with an
    unjudged rollout) are left out too, not counted as dropped. Returns (samples, dropped)."""
    flat = fapo.equal_reward_groups(rewards, group)
    keep = [g for g in range(len(samples) // group) if g not in flat and g not in held]
    return keep_groups(samples, keep, group, world), len(flat - set(held))


def keep_groups(samples, keep, group, world):
    """The samples of the groups in `keep` (indices of this rank's groups of `group` samples), padded with
    zero-weight fillers (grpo.fillers) to the largest count over ranks: every rank makes the same number of
    passes (FSDP), and a group left out adds nothing to the loss or its token-mean normaliser. One all-reduce."""
    kept = [samples[g * group + k] for g in keep for k in range(group)]
    target = int(world.max([len(kept)])[0])
    return kept + grpo.fillers(samples, target - len(kept))


def step_metrics(step, scores, lengths, dropped, unjudged, run):
    """The step's rates, summed over ranks in one all-reduce: reward, length, the reward's counts (the
    objective's rates), groups without signal, groups held out for an unjudged rollout, lengths by kind."""
    sums = {"reward": sum(scores.rewards), "length": sum(lengths), "dropped": dropped, "groups_unjudged": unjudged,
            **scores.counts, **fapo.rollout_shape(scores, lengths, run.cfg.rollouts)}
    summed = run.world.sum_named(sums)
    rates = run.objective.rates(summed, step, run.world)
    rates["zero_var_groups"] = summed["zero_var"] / max(summed["groups"], 1)  # groups with no signal for GRPO
    for kind in ("correct", "wrong", "flawed"):
        rates[f"length_{kind}"] = summed[f"len_{kind}"] / max(summed[f"n_{kind}"], 1)
    return {"reward": summed["reward"] / summed["n"], "response_length": summed["length"] / summed["n"],
            "groups_dropped": int(summed["dropped"]), "groups_unjudged": int(summed["groups_unjudged"]), **rates}


def derive_seed(*parts):
    """A stable 62-bit seed from parts (Python's hash() of a str changes between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 2


# ---- one SFT step ----


def sft_step(step, run):
    """Cross-entropy on this rank's share of --sft-batch sequences (the task's targets, made per step)."""
    cfg, world, tok = run.cfg, run.world, run.tokenizer
    rng = random.Random(derive_seed(cfg.seed, "sft", step, world.rank))
    pairs = []
    for _ in range(cfg.sft_batch // world.size):
        prompt, response = run.task.sft_example(rng)
        response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        pairs.append((data.encode_prompt(tok, prompt, cfg.system_prompt), response_ids))
    t0 = time.time()
    m = grpo.sft_update(run.model, run.optimizer, pairs, run.settings, world)
    run.scheduler.step()
    return {"step": step + 1, **m, "lr": run.scheduler.get_last_lr()[0], "t_train": time.time() - t0}


# ---- the phase loop: steps, evaluation, checkpoints, exports ----

PHASES = {"sft": (sft_step, "sft_steps", "sft_lr", "sft_warmup"), "rl": (rl_step, "steps", "lr", "warmup")}


def run_phase(run, phase, first=None):
    """A phase (sft or rl) in OUT/PHASE: optimizer, resume, then steps with the eval / save / export cadence.
    RL evaluates at its start (or takes the cold start's final eval) and every --eval-every steps; SFT at its
    end. Returns (first eval, last eval, last step's metrics); a finished phase is read back, not rerun."""
    cfg, world = run.cfg, run.world
    step_fn, steps_flag, lr_flag, warmup_flag = PHASES[phase]
    total, out_dir = getattr(cfg, steps_flag), os.path.join(cfg.out, phase)
    run.optimizer, run.scheduler = grpo.make_optimizer(run.model, getattr(cfg, lr_flag), getattr(cfg, warmup_flag),
                                                       cfg.betas, cfg.weight_decay)
    run.settings = config.update_settings(cfg, run.pad_id, phase)
    run.ref_model = None
    if phase == "rl" and cfg.kl_coef > 0:  # the reference is the starting policy, frozen (before the resume)
        run.ref_model = fsdp.frozen_copy(run.model, world, run.dtype, cfg.offload)
    ckpt = checkpoint.Checkpointer(out_dir, world)
    state = ckpt.load(run.model, run.optimizer, run.scheduler) if cfg.resume else None
    start = state["step"] if state else 0
    log = Logger(out_dir, world, total, start, phase, cfg.no_progress, cfg.wandb, vars(cfg))
    evaluating = bool(run.test) and phase == "rl"
    if evaluating and (cfg.start_eval or first):
        first = log.find_eval("start") or first or log.log(run.objective.evaluate(run, "start"))
        if first.get("eval") != "start" and start == 0:
            log.log({**first, "eval": "start"})  # the cold start's final eval is RL's starting point
    last, bad, m = first, 0, log.last_step_record()
    for step in range(start, total):
        m = log.log({**step_fn(step, run), **peak_memory(world)})
        bad = check_numerics(m, bad, cfg)
        done = step + 1 == total
        if evaluating and (done or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)):
            last = log.log({**run.objective.evaluate(run, f"step{step + 1}"), "step": step + 1})
        if done or (cfg.save_every and (step + 1) % cfg.save_every == 0):
            ckpt.save(run.model, run.optimizer, run.scheduler, {"step": step + 1})
        if cfg.export_every and (step + 1) % cfg.export_every == 0:
            ckpt.export(run.model, run.tokenizer, step + 1)
    ckpt.export(run.model, run.tokenizer, total)  # PHASE/hf: the phase's weights (once, also after a resume)
    if phase == "sft" and run.test:
        last = log.find_eval("after_sft") or log.log(run.objective.evaluate(run, "after_sft"))
    log.close()
    return first, last, m


def check_numerics(m, bad, cfg):
    """Consecutive steps whose update was skipped for a non-finite gradient; too many stop the run."""
    bad = bad + 1 if m.get("skipped_updates") else 0
    if bad >= cfg.max_bad_steps:
        raise FloatingPointError(f"{bad} consecutive steps with a non-finite loss or gradient (last: step "
                                 f"{m.get('step', '?')}); stopping. The last checkpoint holds the last good weights.")
    return bad


# ---- setup: the task, the model, the judges (infra/build.py) ----


def setup(cfg) -> Run:
    """Everything a run needs, in the order that fails fastest: data before models, budgets before writing."""
    world = fsdp.World()
    for name, total in (("prompts-per-step", cfg.prompts_per_step), ("sft-batch", cfg.sft_batch)):
        if total % world.size:
            raise SystemExit(f"config error: --{name} {total} must be divisible by the world size {world.size}")
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and world.device.type == "cuda") \
        else torch.float32
    tok = build.tokenizer(cfg)
    task = build.make_task(cfg)
    rows, ids, test, test_ids = build.encode(task, tok, cfg, world)  # bad data fails here, before anything is written
    model = build.load_model(cfg, world, dtype, tok)
    context = model.config.max_position_embeddings
    config.check_budgets(cfg, context)
    judge, eval_judge = build.make_judges(cfg, world, task, dtype)
    config.check_budgets(cfg, context, judge)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = sampler.eos_ids(tok, model)
    objective = CriticObjective(cfg) if cfg.task == "genrm" else PolicyObjective(cfg)
    return Run(cfg, world, task, objective, tok, pad, eos, context, dtype, model, rows, ids,
               [objective.problem(r) for r in rows], test, test_ids, [objective.problem(r) for r in test], judge,
               eval_judge, config.parse_repeats(cfg.eval_repeats))


# ---- main ----


def main(argv=None):
    train(config.parse_config(argv))
    fsdp.close()  # after train()'s models are gone: the group's threads are joined, not left to the teardown


def train(cfg):
    """The phases of a run (SFT cold start and/or RL) in OUT, then the closing table."""
    run = setup(cfg)
    world = run.world
    lock = checkpoint.claim_output_dir(cfg.out, world, resume=cfg.resume, overwrite=cfg.overwrite)
    if cfg.resume:
        changed = [config.changed_on_resume(cfg, os.path.join(cfg.out, "config.json")) if world.main else ""]
        dist.broadcast_object_list(changed, src=0)  # rank 0 decides for all
        if changed[0]:
            raise SystemExit(f"config error: resuming with changed {changed[0]}: the checkpoint restores these; "
                             "start a new run (--out) to change them")
    if world.main:
        shown = vars(cfg)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump({**shown, "world_size": world.size, "device": str(world.device)}, f, indent=1, default=str)
        print("config: " + json.dumps(shown, default=str), flush=True)

    t0 = time.time()
    phases = ["sft"] if cfg.task == "sft" else ["sft", "rl"] if cfg.model == "toy" else ["rl"]
    before = after = last_step = None
    for k, phase in enumerate(phases, 1):  # a random toy model needs a cold start before RL finds any reward
        world.say(describe(cfg, phase, k, len(phases)))
        first, after, last_step = run_phase(run, phase, first=after)
        before = before or (after if phase == "sft" and len(phases) > 1 else first)
    if world.main:
        print(summary(before if before is not after else None, after, time.time() - t0, last_step))
    lock.release()
    if run.judge is not None:
        run.judge.close()


def describe(cfg, phase, k, n):
    if phase == "sft":
        return f"[{k}/{n}] SFT: {cfg.sft_steps} steps x {cfg.sft_batch} sequences"
    reward = "stepwise GenRM reward" if cfg.task == "genrm" else f"FAPO, lambda {cfg.fapo_lambda}, GenRM {cfg.genrm}"
    return f"[{k}/{n}] GRPO ({reward}): {cfg.steps} steps x {cfg.prompts_per_step} prompts x {cfg.rollouts} rollouts"


if __name__ == "__main__":
    try:
        main()
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:  # one clear line per failure (rank 0), the traceback only with --debug
        if "--debug" in sys.argv:
            raise
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
