"""train.py -- GRPO / FAPO training (with its SFT cold start, and GenRM training) under torchrun + FSDP2.

    torchrun train.py                               # the built-in demo: toy task, SFT, then FAPO RL
    torchrun --nproc_per_node=2 train.py            # the same on 2 processes (gloo on CPU)
    torchrun --nproc_per_node=8 train.py --preset fapo-7b --model DIR --data train.parquet \\
        --test-data test.parquet --genrm GENRM_DIR  # the paper's 7B run (docs/recipes.md)

One step of RL (paper, Algorithm 1, with verl's GRPO), rl_step below:
    1. every rank takes its share of the step's prompts and samples G rollouts each (sampler.py),
    2. the rewards: the rule verifier, then the GenRM judges the correct ones and flawed positives get
       1 - lambda (fapo.py) -- or, with --task genrm, the critic's stepwise reward (genrm.py),
    3. GRPO advantages per prompt group (a group never spans ranks), optional DAPO dynamic sampling,
    4. clipped policy-gradient updates with an exact *global* token-mean over micro-batches and ranks (grpo.py).
The same code path runs on 1 CPU, 1 GPU and N nodes: a single process is a world of size 1. Flags and
presets: config.py; held-out metrics: evaluate.py; FSDP, checkpoints and logging: infra/.
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
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

import arith
import critic
import config
import data
import evaluate
import fapo
import genrm
import grpo
import sampler
import toy
from infra import checkpoint, fsdp
from infra.genrm_client import wait_for_verdicts
from infra.runlog import Logger, dump_rollouts, peak_memory, summary

hf_logging.disable_progress_bar()  # our own tqdm bar is the only one

# ---- what a run holds ----


@dataclass
class Run:
    """Everything a phase works with, built once by setup(); cfg is the parsed flags and nothing else."""
    cfg: object                 # argparse.Namespace from config.parse_config
    world: fsdp.World
    task: data.Task
    tokenizer: object
    pad_id: int                 # may equal EOS: masks come from positions, never from this id
    eos_ids: list               # every id that ends a rollout
    context: int                # the policy's context length
    dtype: torch.dtype          # compute dtype
    model: torch.nn.Module      # the policy (FSDP2-sharded)
    rows: list                  # train rows and their prompt ids
    ids: list
    test: list                  # test rows and their prompt ids
    test_ids: list
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

    def reward(self, rows, texts, lengths, judge, judging=None) -> fapo.Scores:
        """The one reward seam: FAPO's for --task rl (judging: verdicts already requested wave by wave), the
        GenRM's stepwise critic reward for --task genrm; DAPO's overlong shaping on both, as officially."""
        cfg = self.cfg
        if cfg.task != "genrm":
            return fapo.score_rollouts(texts, [r.ground_truth for r in rows], [data.problem_text(r) for r in rows],
                                       genrm=judge, lam=cfg.fapo_lambda, lengths=lengths, max_len=cfg.max_response_len,
                                       overlong_buffer=cfg.overlong_buffer, overlong_factor=cfg.overlong_factor,
                                       judging=judging)
        rewards, sums, preds = critic.critic_rewards(rows, texts)
        right = [r > 0 for r in rewards]  # the flawed/clean verdict was right (outcome +1)
        rewards = [r + fapo.overlong_penalty(n, cfg.max_response_len, cfg.overlong_buffer, cfg.overlong_factor)
                   for r, n in zip(rewards, lengths)]
        return fapo.Scores(rewards, right, preds, sums, list(texts))

    def dump(self, phase, step, rows, texts, comps, scores, per_prompt, name):
        """OUT/dumps/NAME.jsonl: every rollout of rank 0's first --dump-prompts prompts (rollouts are
        prompt-major), with its reward, rule verdict, the GenRM's verdict and critique."""
        cfg = self.cfg
        if not self.world.main or not cfg.dump_prompts:
            return
        n = cfg.dump_prompts * per_prompt
        dump_rollouts(os.path.join(cfg.out, "dumps", f"{name}.jsonl"), [
            {"phase": phase, "step": step, "prompt": data.problem_text(r) if cfg.task != "genrm" else "",
             "response": x, "reward": scores.rewards[k], "correct": bool(scores.correct[k]),
             "genrm_index": scores.first_error[k], "critique": scores.critiques[k] if scores.critiques else "",
             "length": len(c.tokens), "finish_reason": c.finish_reason, "data_source": r.data_source,
             "ground_truth": str(r.ground_truth)} for k, (r, x, c) in enumerate(zip(rows[:n], texts, comps))])


# ---- one RL step ----


def rl_step(step, run):
    """One GRPO step: sample, score, advantages, update. Returns the step's metrics (global)."""
    cfg, world = run.cfg, run.world
    idx = step_batch(len(run.rows), step, cfg, world)
    rows = [run.rows[i] for i in idx for _ in range(cfg.rollouts)]
    t0 = time.time()
    with genrm.ready(run.judge) as judge:
        if judge is not None:  # a sampling GenRM draws from a per-step stream: a resumed run repeats it
            judge.reseed(derive_seed(cfg.seed, "judge", step, world.rank))
        comps, texts, judging = rollouts(step, idx, run, judge)
        t1 = time.time()
        lengths = [len(c.tokens) for c in comps]
        judging, waited = await_verdicts(step, run, judge, judging, rows, texts)  # an outage: waited through
        scores = run.reward(rows, texts, lengths, judge, judging)  # t_judge: the wait for verdicts
    t2 = time.time()
    if cfg.dump_every and (step + 1) % cfg.dump_every == 0:
        run.dump("rl", step + 1, rows, texts, comps, scores, cfg.rollouts, f"rl_step{step + 1}")
    groups = [step * cfg.prompts_per_step + world.rank * len(idx) + k // cfg.rollouts for k in range(len(comps))]
    adv = grpo.group_advantages(torch.tensor(scores.rewards), groups, norm_by_std=bool(cfg.norm_adv_by_std)).tolist()
    samples = [grpo.Sample(run.ids[i], c.tokens, a, sampler_logp=c.logprobs)
               for i, c, a in zip([i for i in idx for _ in range(cfg.rollouts)], comps, adv)]
    # a rollout without a verdict never trains as clean: its whole group is held out of the update
    held = {k // cfg.rollouts for k, u in enumerate(scores.unjudged) if u}
    if cfg.dynamic_sampling:
        samples, dropped = dynamic_sampling(samples, scores.rewards, cfg.rollouts, world, held)
    else:
        samples, dropped = keep_groups(samples, [g for g in range(len(idx)) if g not in held], cfg.rollouts, world), 0
    upd = grpo.policy_update(run.model, run.optimizer, samples, run.settings, world, run.ref_model) if samples else {}
    run.scheduler.step()
    t3 = time.time()
    m = step_metrics(step, scores, lengths, dropped, cfg, world, len(held))
    return {"step": step + 1, **m, "lr": run.scheduler.get_last_lr()[0], "t_sample": t1 - t0, "t_judge": t2 - t1,
            "t_train": t3 - t2, "judge_share": (t2 - t1) / max(t3 - t0, 1e-9), "genrm_wait_s": waited, **upd,
            **peak_memory(world)}


# Why hold out, not judge again, when some of a step's requests fail: each has already been tried
# --genrm-retries + 1 times with backoff, so one more round would usually fail the same way and cost the
# whole step up to another (retries + 1) x --genrm-timeout; and a group's GRPO advantages are relative
# to its own members, so giving the unjudged rollout any reward (+1 as clean, or 0 as flawed) biases
# the whole group, and dropping that rollout alone would change the group's normalisation. Held out, the
# group costs its signal for one step, no bias, and is counted (groups_unjudged, warned past 1%). Only
# when *every* request failed (the service is down) is there nothing to learn from: then the same
# prompts are asked again (await_verdicts) until the GenRM answers or --genrm-wait is spent.
def await_verdicts(step, run, judge, judging, rows, texts):
    """(judging, seconds waited): the step's verdicts, requested here when decoding did not already send them;
    when every request of the step failed, the outage is waited through (infra/genrm_client.wait_for_verdicts:
    the same prompts asked again, with backoff, up to --genrm-wait), and past that the run stops."""
    cfg = run.cfg
    if judge is None or cfg.task != "rl":
        return judging, 0.0
    if judging is None:
        judging = fapo.request_verdicts(texts, [r.ground_truth for r in rows], [data.problem_text(r) for r in rows],
                                        judge)
    judging, waited, tot = wait_for_verdicts(judging, judge, run.world, cfg.genrm_wait, f"step {step + 1}")
    if tot["judged"] and tot["judge_failed"] == tot["judged"]:
        fapo.check_verdicts(tot, step)  # raises: nothing answered within --genrm-wait
    return judging, waited


def step_batch(n_rows, step, cfg, world):
    """This rank's row indices for a step (its slice of the step's prompts; resumable from the step)."""
    per_rank = cfg.prompts_per_step // world.size
    start = step * cfg.prompts_per_step + world.rank * per_rank
    return [epoch_order(cfg.seed, i // n_rows, n_rows)[i % n_rows] for i in range(start, start + per_rank)]


@functools.lru_cache(maxsize=2)
def epoch_order(seed, epoch, n):
    """The data order of one epoch: a seeded permutation, the same on every rank."""
    return random.Random(seed * 1_000_003 + epoch).sample(range(n), n)


def rollouts(step, idx, run, judge):
    """(completions, texts, judging): the step's G rollouts of each prompt. With a judge that
    works in the background (a served GenRM), prompts are decoded in --overlap-waves waves and each wave's
    correct rollouts are sent off as soon as it is done (fapo.request_verdicts), so judging overlaps decoding."""
    cfg, world = run.cfg, run.world
    seed = derive_seed(cfg.seed, "rollout", step, world.rank)
    waves = cfg.overlap_waves if judge is not None and judge.background and cfg.task == "rl" else 1
    if waves <= 1:
        comps = run.sample([run.ids[i] for i in idx], cfg.rollouts, seed)
        return comps, [run.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in comps], None
    comps, texts, judging = [], [], None
    per_wave = math.ceil(len(idx) / waves)
    for w in range(waves):  # the same number of waves on every rank: sampling gathers the model
        part = idx[w * per_wave:(w + 1) * per_wave]
        got = run.sample([run.ids[i] for i in part], cfg.rollouts, derive_seed(seed, w))
        wave_texts = [run.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in got]
        rows = [run.rows[i] for i in part for _ in range(cfg.rollouts)]
        sent = fapo.request_verdicts(wave_texts, [r.ground_truth for r in rows], [data.problem_text(r) for r in rows],
                                     judge)
        judging = sent if judging is None else judging + sent
        comps, texts = comps + got, texts + wave_texts
    return comps, texts, judging  # fapo.score_rollouts waits for the verdicts


def dynamic_sampling(samples, rewards, group, world, held=frozenset()):
    """DAPO: a group whose rewards are all equal carries no signal; drop it (no refill), then pad every rank
    to the same count with zero-weight samples (FSDP needs equal pass counts). Groups in `held` (with an
    unjudged rollout) are left out too, not counted as dropped. Returns (samples, dropped)."""
    flat = {g for g in range(len(samples) // group) if len(set(rewards[g * group:(g + 1) * group])) == 1}
    keep = [g for g in range(len(samples) // group) if g not in flat and g not in held]
    return keep_groups(samples, keep, group, world), len(flat - set(held))


def keep_groups(samples, keep, group, world):
    """The samples of the groups in `keep` (indices of this rank's groups of `group` samples), padded with
    zero-weight fillers (grpo.fillers) to the largest count over ranks: every rank makes the same number of
    passes (FSDP), and a group left out adds nothing to the loss or its token-mean normaliser. One all-reduce."""
    kept = [samples[g * group + k] for g in keep for k in range(group)]
    target = int(world.max([len(kept)])[0])
    return kept + grpo.fillers(samples, target - len(kept))


def step_metrics(step, scores, lengths, dropped, cfg, world, unjudged=0):
    """The step's rates, summed over ranks in one all-reduce: reward, length, the reward's counts
    (fapo.rollout_metrics or critic.critic_batch_metrics), groups without signal, groups held out for an
    unjudged rollout, lengths by kind."""
    keys = sorted(scores.counts)  # the same keys on every rank
    shape = fapo.rollout_shape(scores, lengths, cfg.rollouts)
    tot = dict(zip(["reward", "length", "dropped", "groups_unjudged"] + keys + list(shape),
                   world.sum([sum(scores.rewards), sum(lengths), dropped, unjudged]
                             + [float(scores.counts[k]) for k in keys] + list(shape.values()))))
    rates = critic.critic_batch_metrics(tot) if cfg.task == "genrm" else fapo.rollout_metrics(tot)
    rates["zero_var_groups"] = tot["zero_var"] / max(tot["groups"], 1)  # groups with no signal for GRPO
    for kind in ("correct", "wrong", "flawed"):
        rates[f"length_{kind}"] = tot[f"len_{kind}"] / max(tot[f"n_{kind}"], 1)
    if cfg.task == "rl":
        if warning := fapo.check_verdicts(tot, step):
            world.say(warning)
    return {"reward": tot["reward"] / tot["n"], "response_length": tot["length"] / tot["n"],
            "groups_dropped": int(tot["dropped"]), "groups_unjudged": int(tot["groups_unjudged"]), **rates}


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
    run.optimizer, run.scheduler = make_optimizer(run.model, getattr(cfg, lr_flag), getattr(cfg, warmup_flag), cfg)
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
        first = log.find_eval("start") or first or log.log(run_eval(run, "start"))
        if first.get("eval") != "start" and start == 0:
            log.log({**first, "eval": "start"})  # the cold start's final eval is RL's starting point
    last, bad, m = first, 0, log.last_step_record()
    for step in range(start, total):
        m = log.log(step_fn(step, run))
        bad = check_numerics(m, bad, cfg)
        done = step + 1 == total
        if evaluating and (done or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)):
            last = log.log({**run_eval(run, f"step{step + 1}"), "step": step + 1})
        if done or (cfg.save_every and (step + 1) % cfg.save_every == 0):
            ckpt.save(run.model, run.optimizer, run.scheduler, {"step": step + 1})
        if cfg.export_every and (step + 1) % cfg.export_every == 0:
            ckpt.export(run.model, run.tokenizer, step + 1)
    ckpt.export(run.model, run.tokenizer, total)  # PHASE/hf: the phase's weights (once, also after a resume)
    if phase == "sft" and run.test:
        last = log.find_eval("after_sft") or log.log(run_eval(run, "after_sft"))
    log.close()
    return first, last, m


def run_eval(run, tag):
    return (evaluate.evaluate_critic if run.cfg.task == "genrm" else evaluate.evaluate_policy)(run, tag)


def make_optimizer(model, lr, warmup, cfg):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    # deviation from verl: warm-up reaches lr/warmup at the first step (verl's starts at 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    return opt, sched


def check_numerics(m, bad, cfg):
    """Consecutive steps whose update was skipped for a non-finite gradient; too many stop the run."""
    bad = bad + 1 if m.get("skipped_updates") else 0
    if bad >= cfg.max_bad_steps:
        raise FloatingPointError(f"{bad} consecutive steps with a non-finite loss or gradient (last: step "
                                 f"{m.get('step', '?')}); stopping. The last checkpoint holds the last good weights.")
    return bad


# ---- setup: the task, the model, the judges ----


def make_task(cfg) -> data.Task:
    kind = "critic" if cfg.task == "genrm" else "policy"
    if cfg.data == "toy":
        return toy.ToyTask(kind, cfg.seed, cfg.eval_prompts, cfg.sft_flawed_share, cfg.toy_regime, cfg.sft_slip_share,
                           test=cfg.test_data)
    if cfg.data == "arith":  # word problems with an exact equation checker (arith.py); test "arith": its held-out split
        return arith.ArithTask(kind, eval_prompts=cfg.eval_prompts, test=cfg.test_data,
                               flawed_share=cfg.sft_flawed_share, level=cfg.arith_level)
    return data.FileTask(kind, cfg.data, None if cfg.test_data == "none" else cfg.test_data, cfg.eval_prompts,
                         sft=cfg.task == "sft")


def load_model(cfg, world, dtype, tokenizer):
    """The policy, sharded. Toy: built from a config (0.5M parameters, seeded); else a local HF dir, read
    shard by shard so that no rank ever holds the whole model (infra/fsdp.load_pretrained)."""
    def configure(model):
        if cfg.context_len:  # e.g. Qwen2.5-Math-7B ships 4096; the official scripts override it to 32768
            model.config.max_position_embeddings = cfg.context_len
        if cfg.grad_checkpointing:  # transformers 5.24 renamed it; 5.17 has only the old name
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    if cfg.model != "toy":
        return fsdp.load_pretrained(cfg.model, world, dtype, offload=cfg.offload, configure=configure)
    model = toy.build_model(tokenizer, cfg.seed)
    configure(model)
    return fsdp.shard(model, world, dtype, offload=cfg.offload)


def encode(task, tokenizer, cfg, world):
    """(train rows, ids, test rows, ids): over-long prompts dropped and counted, never truncated."""
    train, test = task.rows()
    train, train_ids, dropped = task.encode(tokenizer, train, cfg.max_prompt_len, cfg.system_prompt)
    test, test_ids, dropped_test = task.encode(tokenizer, test, cfg.max_prompt_len, cfg.system_prompt)
    if dropped or dropped_test:
        world.say(f"dropped over-long prompts (> {cfg.max_prompt_len} tokens): train {dropped}, test {dropped_test}")
    if not train:
        raise ValueError(f"{cfg.data}: no prompt fits --max-prompt-len {cfg.max_prompt_len}")
    if not test:
        world.say("no test data (--test-data none): nothing will be evaluated")
    return train, train_ids, test, test_ids


def make_judges(cfg, world, task, dtype):
    """(the training judge, the eval judge). The eval measures the flawed ratio with the task's exact checker
    when it has one, else with the training GenRM; a learned GenRM on such a task is audited by the checker.
    The GenRM's sampling as it will decode (unset flags resolved) goes into the printed config: genrm_sampling."""
    if cfg.task == "genrm":
        return None, None
    judge = genrm.make_judge(cfg.genrm, checker=task.checker, world=world, dtype=dtype, max_tokens=cfg.genrm_max_tokens,
                             temperature=cfg.genrm_temperature, top_p=cfg.genrm_top_p, top_k=cfg.genrm_top_k,
                             seed=cfg.seed, context_len=cfg.genrm_context_len,
                             max_tokens_in_flight=cfg.max_tokens_in_flight or None,
                             served_model=cfg.genrm_model or "genrm", concurrency=cfg.genrm_concurrency,
                             timeout=cfg.genrm_timeout, retries=cfg.genrm_retries, prompt_format=cfg.judge_prompt,
                             verdict_parse=cfg.verdict_parse)
    if judge is not None and judge.sampling:
        cfg.genrm_sampling = dict(judge.sampling)
    if task.checker is None:
        return judge, judge
    oracle = genrm.CheckerJudge(task.checker)
    if cfg.genrm not in ("none", "oracle"):
        judge = genrm.AuditedJudge(judge, oracle)
    return judge, oracle


def setup(cfg) -> Run:
    """Everything a run needs, in the order that fails fastest: data before models, budgets before writing."""
    world = fsdp.World()
    for name, total in (("prompts-per-step", cfg.prompts_per_step), ("sft-batch", cfg.sft_batch)):
        if total % world.size:
            raise SystemExit(f"config error: --{name} {total} must be divisible by the world size {world.size}")
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and world.device.type == "cuda") \
        else torch.float32
    tok = toy.tokenizer() if cfg.model == "toy" else AutoTokenizer.from_pretrained(cfg.model)
    task = make_task(cfg)
    rows, ids, test, test_ids = encode(task, tok, cfg, world)  # bad data fails here, before anything is written
    model = load_model(cfg, world, dtype, tok)
    context = model.config.max_position_embeddings
    config.check_budgets(cfg, context)
    judge, eval_judge = make_judges(cfg, world, task, dtype)
    config.check_budgets(cfg, context, judge)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen = getattr(model.generation_config, "eos_token_id", None) if model.generation_config else None
    eos = sorted({tok.eos_token_id} | set(gen if isinstance(gen, list) else [gen]) - {None})
    return Run(cfg, world, task, tok, pad, eos, context, dtype, model, rows, ids, test, test_ids, judge, eval_judge,
               config.parse_repeats(cfg.eval_repeats))


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
