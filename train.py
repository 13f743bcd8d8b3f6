"""train.py -- GRPO / FAPO training (with its SFT cold start, and GenRM training) under torchrun + FSDP2.

    torchrun train.py                               # the built-in demo: toy task, SFT, then FAPO RL
    torchrun --nproc_per_node=2 train.py            # the same on 2 processes (gloo on CPU)
    torchrun --nproc_per_node=8 train.py --preset fapo-7b --model DIR --data train.parquet \
        --test-data test.parquet --genrm GENRM_DIR  # the paper's 7B run (see README)

One step of RL (paper, Algorithm 1, with verl's GRPO):
    1. every rank takes its share of the step's prompts and samples G rollouts each (sampler.py),
    2. the reward function scores them: the rule verifier, then the GenRM judges the correct ones and
       flawed positives get 1 - lambda (fapo.py) -- or, with --task genrm, the critic's stepwise reward,
    3. GRPO advantages per prompt group (a group never spans ranks), optional DAPO dynamic sampling,
    4. clipped policy-gradient updates with an exact *global* token-mean over micro-batches and ranks.
The same code path runs on 1 CPU, 1 GPU and N nodes: a single process is a world of size 1. The FSDP and
checkpoint machinery lives in fsdp.py; the toy task in toy.py.
"""
import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import random
import sys
import time

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging as hf_logging

import data
import fapo
import fsdp
import genrm
import genrm_http
import grpo
import sampler
import toy

hf_logging.disable_progress_bar()  # our own tqdm bar is the only one

# ---- config: literal defaults (the paper's, for real data), then named presets, then your flags ----

# Each preset mirrors a run: the toy demo, or one of the official run scripts (recipe/fapo/run_*.sh).
# An explicit flag always wins over the preset; --preset none keeps the literal defaults.
_OFFICIAL = dict(prompts_per_step=512, mini_batch_prompts=32, rollouts=8, temperature=1.0, top_p=1.0, top_k=0,
                 max_prompt_len=2048, max_response_len=8192, overlong_buffer=4096, overlong_factor=1.0,
                 lr=1e-6, warmup=10, weight_decay=0.1, grad_clip=1.0, clip_low=0.2, clip_high=0.28, clip_c=10.0,
                 loss_agg="token-mean", kl_coef=0.0, eval_temperature=1.0, eval_top_p=0.7, eval_samples=1, pass_k=1,
                 eval_every=10, save_every=0, grad_checkpointing=True, offload=True,
                 micro_batch_tokens=(2048 + 8192) * 2, logprob_batch_tokens=(2048 + 8192) * 3)
PRESETS = {
    # the built-in demo (../shared/TOY-NOTES.md): a 0.5M-parameter model needs a bigger lr and a cold start
    "toy": dict(steps=100, prompts_per_step=16, mini_batch_prompts=0, rollouts=8, lr=2e-4, max_prompt_len=64,
                max_response_len=48, overlong_buffer=0, eval_every=25, save_every=50, sft_steps=800, sft_batch=64,
                sft_lr=1e-3, genrm_max_tokens=96, genrm_temperature=0.0, eval_samples=4, eval_top_p=1.0,
                micro_batch=64, micro_batch_tokens=0, logprob_batch_tokens=0, grad_checkpointing=False,
                offload=False, eval_prompts=256),
    # toy GenRM: 8 rollouts at temperature 1.0 and lr 3e-5 instead of the paper's 16 / 1.2 / 1e-6: a 0.5M model
    # sampled at 1.2 makes copying slips that swamp the verdict signal (measured: F1 0.97 -> 0.89 in 60 steps)
    "toy-genrm": dict(steps=60, prompts_per_step=16, mini_batch_prompts=0, rollouts=8, lr=3e-5, max_prompt_len=256,
                      max_response_len=96, overlong_buffer=0, eval_every=20, save_every=50, sft_steps=500, sft_batch=32,
                      sft_lr=1e-3, eval_samples=4, eval_temperature=0.0, eval_top_p=1.0, micro_batch=64, micro_batch_tokens=0,
                      logprob_batch_tokens=0, grad_checkpointing=False, offload=False, eval_prompts=256),
    # run_fapo_7b.sh: Qwen2.5-Math-7B, FAPO-GenRM-4B judging with its default sampling (16k new tokens)
    "fapo-7b": dict(_OFFICIAL, steps=200, context_len=32768, genrm_max_tokens=16384, genrm_temperature=1.0,
                    fapo_lambda=1.0),
    "baseline-7b": dict(_OFFICIAL, steps=200, context_len=32768, genrm="none", fapo_lambda=0.0),  # run_baseline_7b.sh
    # run_fapo_32b.sh: 20k-token responses, token budgets of 1x (prompt + response), 600 steps in the script
    "fapo-32b": dict(_OFFICIAL, steps=600, max_response_len=20480, genrm_max_tokens=16384, genrm_temperature=1.0,
                     micro_batch_tokens=2048 + 20480, logprob_batch_tokens=2048 + 20480, fapo_lambda=1.0),
    # run_fapo_genrm_train.sh: Qwen3-4B-Instruct-2507 trained as the GenRM on FAPO-Critic
    "genrm-4b": dict(_OFFICIAL, task="genrm", steps=500, rollouts=16, temperature=1.2, max_prompt_len=5120,
                     eval_temperature=0.6, eval_top_p=0.95, save_every=10, context_len=32768,
                     micro_batch_tokens=(5120 + 8192) * 2, logprob_batch_tokens=(5120 + 8192) * 3),
}


def build_parser(suppress=False):
    """The one config. suppress=True gives a parser whose namespace holds only the flags actually given."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def add(flag, default, **kw):
        ap.add_argument(flag, default=argparse.SUPPRESS if suppress else default, **kw)

    add("--preset", "auto", choices=["auto", "none"] + list(PRESETS),
        help="a named run (values at the top of train.py); auto: toy / toy-genrm on toy data, none otherwise")
    add("--task", "rl", choices=["rl", "sft", "genrm"],
        help="rl: GRPO/FAPO on a policy; sft: cross-entropy only; genrm: GRPO on critique rows with the stepwise "
             "reward. With --model toy, rl and genrm start with an SFT cold start (the built-in demo)")
    add("--model", "toy", help="local HF model dir, or 'toy' for a tiny Qwen3 built from a config")
    add("--data", "toy", help="train rows (.jsonl/.json/.parquet, verl schema) or 'toy'")
    add("--test-data", "auto", help="eval rows, 'toy', or 'none'; auto: toy for toy data, none otherwise")
    add("--out", "", help="output dir: config.json, metrics.jsonl, checkpoints (default out/TASK)")
    add("--resume", False, action="store_true", help="continue from OUT's last checkpoint")
    add("--overwrite", False, action="store_true", help="start afresh in an OUT that holds a previous run")
    add("--seed", 0, type=int, help="seeds model init, data order and every sampling generator")
    add("--context-len", 0, type=int, help="override the model's max_position_embeddings (rope untouched); 0: keep")
    add("--debug", False, action="store_true", help="full tracebacks on every rank")
    # rollouts
    add("--steps", 200, type=int, help="RL steps")
    add("--prompts-per-step", 512, type=int, help="prompts per step, all ranks together")
    add("--rollouts", 8, type=int, help="G: samples per prompt (>= 2: a group of one has no advantage)")
    add("--temperature", 1.0, type=float, help="rollout temperature (> 0: the loss uses the same distribution)")
    add("--top-p", 1.0, type=float)
    add("--top-k", 0, type=int, help="0: off")
    add("--max-prompt-len", 2048, type=int, help="longer prompts are dropped and counted, never truncated")
    add("--max-response-len", 8192, type=int, help="new tokens per rollout")
    add("--overlap-waves", 4, type=int, help="with a GenRM endpoint: decode in this many waves, judging each "
                                              "finished wave while the next decodes (1: no overlap)")
    add("--max-tokens-in-flight", 0, type=int, help="sampler memory cap: rows x (prompt + response) per wave; 0: none")
    add("--fast-sampler", "auto", choices=["auto", "on", "off"],
        help="the sampler's static-cache decode loop; auto: on CUDA, the eager loop on CPU (where it is no faster)")
    # reward
    add("--genrm", "oracle", help="'oracle' (the toy step checker; toy data only), 'none', a GenRM model dir, "
                                  "or an OpenAI-compatible endpoint http://HOST:PORT/v1")
    add("--genrm-model", "", help="model name sent to the GenRM endpoint")
    add("--fapo-lambda", 1.0, type=float, help="flawed positives get 1 - lambda; 0 is the baseline (the GenRM "
                                               "still judges, so its flawed ratio is measured)")
    add("--genrm-temperature", 1.0, type=float, help="GenRM decoding temperature when judging (0 = greedy)")
    add("--genrm-top-p", 1.0, type=float)
    add("--genrm-max-tokens", 16384, type=int, help="GenRM response budget when judging")
    add("--genrm-context-len", 0, type=int, help="override the GenRM's max_position_embeddings; 0: keep")
    add("--genrm-concurrency", 32, type=int, help="requests in flight to a GenRM endpoint, per rank")
    add("--genrm-timeout", 300.0, type=float, help="seconds per GenRM request")
    add("--genrm-retries", 2, type=int, help="retries per failed GenRM request (with backoff)")
    add("--overlong-buffer", 4096, type=int, help="DAPO overlong buffer (tokens); 0 = off")
    add("--overlong-factor", 1.0, type=float)
    # loss
    add("--mini-batch-prompts", 32, type=int, help="prompts per optimizer update (0: the whole step, one update)")
    add("--micro-batch", 64, type=int, help="rows per forward/backward, when --micro-batch-tokens is 0")
    add("--micro-batch-tokens", 20480, type=int, help="padded tokens per forward/backward of the update; 0: rows")
    add("--logprob-batch-tokens", 30720, type=int, help="padded tokens per no-grad log-prob pass; 0: rows")
    add("--clip-low", 0.2, type=float)
    add("--clip-high", 0.28, type=float)
    add("--clip-c", 10.0, type=float, help="dual-clip constant for negative advantages (> 1)")
    add("--loss-agg", "token-mean", choices=list(grpo.AGG_MODES))
    add("--norm-adv-by-std", 1, type=int, choices=[0, 1], help="1: GRPO; 0: Dr. GRPO (s - mean)")
    add("--dynamic-sampling", False, action="store_true", help="DAPO: drop groups whose rewards are all equal")
    add("--kl-coef", 0.0, type=float, help="KL-to-reference loss coefficient (0: no reference model)")
    add("--kl-kind", "k3", choices=["k1", "k2", "k3", "abs"])
    add("--tis-cap", 0.0, type=float, help="truncated importance weight min(pi_old / pi_sampler, C) on the loss "
                                           "(verl's rollout correction; a departure from the paper); 0: off")
    add("--max-bad-steps", 3, type=int, help="stop after this many consecutive steps with a non-finite gradient")
    # optimisation
    add("--lr", 1e-6, type=float, help="RL learning rate")
    add("--warmup", 10, type=int, help="linear warm-up steps, then constant")
    add("--weight-decay", 0.1, type=float)
    add("--betas", [0.9, 0.999], type=float, nargs=2)
    add("--grad-clip", 1.0, type=float)
    add("--grad-checkpointing", False, action=argparse.BooleanOptionalAction)
    add("--offload", False, action=argparse.BooleanOptionalAction,
        help="FSDP2 CPU offload of parameters, gradients and optimizer state (GPU runs)")
    add("--dtype", "auto", choices=["auto", "float32", "bfloat16"], help="auto: bf16 compute on CUDA, fp32 on CPU")
    # SFT (cold start)
    add("--sft-steps", 1000, type=int, help="cold-start steps")
    add("--sft-batch", 64, type=int, help="sequences per SFT step, all ranks together")
    add("--sft-lr", 1e-5, type=float)
    add("--sft-warmup", 50, type=int)
    add("--sft-flawed-share", 0.3, type=float, help="toy: share of SFT traces with a flawed step")
    add("--toy-regime", "coupled", choices=list(toy.REGIMES), help="toy SFT traces: coupled (the demo) or decoupled, "
        "whose wrong answers come from final slips independent of the flaws (toy.py; wants --sft-steps 3000)")
    add("--sft-slip-share", 0.2, type=float, help="toy, decoupled: share of SFT traces with a final slip (early answer)")
    # evaluation and logging
    add("--eval-every", 10, type=int, help="RL steps between evaluations (0: only at start and end)")
    add("--eval-prompts", 0, type=int, help="test prompts per evaluation (0: all)")
    add("--eval-samples", 4, type=int, help="samples per test prompt (avg@n, pass@k)")
    add("--eval-repeats", "", help="per-source samples, e.g. 'aime=32,gpqa=4' (data_source substring=n)")
    add("--eval-temperature", 1.0, type=float)
    add("--eval-top-p", 0.7, type=float)
    add("--pass-k", 2, type=int, help="k of the unbiased pass@k estimate (k <= samples of every source)")
    add("--dump-every", 0, type=int, help="RL steps between rollout dumps (OUT/dumps); evals always dump")
    add("--dump-prompts", 4, type=int, help="prompts per dump (rank 0's first ones), every rollout of each")
    add("--save-every", 50, type=int, help="steps between checkpoints (0: only at the end)")
    add("--export-every", 0, type=int, help="steps between HF exports (OUT/exports/step_N; OUT/hf is the newest); "
                                            "0: only at the end of each phase")
    add("--no-progress", False, action="store_true", help="no tqdm bar")
    add("--wandb", "", help="W&B project: mirror metrics.jsonl there (optional: pip install wandb)")
    return ap


def parse_config(argv=None):
    """Literal defaults < preset < explicit flags. Validated before anything is loaded or written."""
    cfg = build_parser().parse_args(argv)
    given = vars(build_parser(suppress=True).parse_args(argv))
    if cfg.preset == "auto":
        cfg.preset = ("toy-genrm" if cfg.task == "genrm" else "toy") if cfg.data == "toy" else "none"
    for k, v in PRESETS.get(cfg.preset, {}).items():
        if k not in given:
            setattr(cfg, k, v)
    if cfg.test_data == "auto":
        cfg.test_data = "toy" if cfg.data == "toy" else "none"
    cfg.out = cfg.out or os.path.join("out", cfg.task)
    cfg.toy = cfg.data == "toy"
    validate(cfg)
    return cfg


def validate(cfg):
    """Refuse what cannot work, with one clear line, before anything is loaded or written."""
    def need(ok, msg):
        if not ok:
            raise SystemExit(f"config error: {msg}")
    for name in ("steps", "prompts_per_step", "rollouts", "max_prompt_len", "max_response_len", "micro_batch",
                 "sft_steps", "sft_batch", "eval_samples", "pass_k", "max_bad_steps", "genrm_max_tokens",
                 "genrm_concurrency"):
        need(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "save_every", "eval_prompts", "overlong_buffer", "warmup", "sft_warmup", "top_k",
                 "mini_batch_prompts", "micro_batch_tokens", "logprob_batch_tokens", "max_tokens_in_flight",
                 "context_len", "genrm_context_len", "genrm_retries", "dump_every", "dump_prompts", "overlap_waves",
                 "export_every"):
        need(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    need(cfg.tis_cap >= 0, "--tis-cap must be >= 0")
    for name in ("lr", "sft_lr", "grad_clip", "genrm_timeout", "overlong_factor"):
        need(getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name)), f"--{name.replace('_', '-')} must be > 0")
    for name in ("top_p", "eval_top_p", "genrm_top_p"):
        need(0 < getattr(cfg, name) <= 1, f"--{name.replace('_', '-')} must be in (0, 1]")
    need(cfg.temperature > 0, "--temperature must be > 0 for RL: the loss needs the sampling distribution")
    need(cfg.eval_temperature >= 0 and cfg.genrm_temperature >= 0, "temperatures must be >= 0")
    need(0 <= cfg.fapo_lambda, f"--fapo-lambda must be >= 0, got {cfg.fapo_lambda}")
    need(cfg.rollouts >= 2 or cfg.task == "sft", "--rollouts must be >= 2: a GRPO group of one has zero advantage")
    need(0 <= cfg.sft_flawed_share <= 1 and 0 <= cfg.sft_slip_share <= 1, "--sft-*-share must be in [0, 1]")
    need(cfg.clip_c > 1, "--clip-c must be > 1")
    need(cfg.overlong_buffer < cfg.max_response_len,
         f"--overlong-buffer {cfg.overlong_buffer} must be < --max-response-len {cfg.max_response_len}, "
         "or every rollout is penalised")
    need(not cfg.mini_batch_prompts or cfg.prompts_per_step % cfg.mini_batch_prompts == 0,
         f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of --mini-batch-prompts {cfg.mini_batch_prompts}")
    cfg.eval_repeat_map = parse_repeats(cfg.eval_repeats)
    need(cfg.pass_k <= min([cfg.eval_samples] + list(cfg.eval_repeat_map.values())),
         f"--pass-k {cfg.pass_k} needs at least that many samples per prompt (--eval-samples / --eval-repeats)")
    need(cfg.genrm != "oracle" or cfg.toy or cfg.task != "rl",
         "--genrm oracle is the toy task's exact checker and judges nothing on real data: give --genrm DIR, "
         "--genrm http://HOST:PORT/v1, or --genrm none (the baseline)")
    for name in ("model", "data", "test_data", "genrm"):
        path = getattr(cfg, name)
        if path not in ("toy", "none", "oracle") and not path.startswith(("http://", "https://")):
            need(os.path.exists(path), f"--{name.replace('_', '-')} {path}: no such file or directory "
                                       "(models are read from local directories; nothing is downloaded)")


def parse_repeats(text):
    """'aime=32,gpqa=4' -> {'aime': 32, 'gpqa': 4}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, n = part.partition("=")
        if not key or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"config error: --eval-repeats: expected SOURCE=N, got {part!r}")
        out[key] = int(n)
    return out


def update_settings(cfg, phase="rl"):
    """grpo.UpdateSettings from the config: the loss knows nothing of argparse."""
    n_updates = cfg.prompts_per_step // cfg.mini_batch_prompts if cfg.mini_batch_prompts else 1
    return grpo.UpdateSettings(
        pad_id=cfg.pad_id, temperature=cfg.temperature if phase == "rl" else 1.0, mini_batches=n_updates,
        micro_batch=cfg.micro_batch, micro_batch_tokens=cfg.micro_batch_tokens,
        logprob_batch_tokens=cfg.logprob_batch_tokens, loss_agg=cfg.loss_agg, clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, clip_c=cfg.clip_c, grad_clip=cfg.grad_clip, kl_coef=cfg.kl_coef,
        kl_kind=cfg.kl_kind, max_response_len=cfg.max_response_len, tis_cap=cfg.tis_cap if phase == "rl" else 0.0)


def derive_seed(*parts):
    """A stable 62-bit seed from parts (Python's hash() of a str changes between processes)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 2


# ---- setup: models, data, the judge, the reward ----

def load_model(cfg, world, path=None, seed=None):
    """The policy, sharded. Toy: built from a config (0.5M parameters, seeded); else a local HF dir, read
    shard by shard so that no rank ever holds the whole model (fsdp.load_pretrained)."""
    path = path or cfg.model

    def configure(model):
        if cfg.context_len:  # e.g. Qwen2.5-Math-7B ships 4096; the official scripts override it to 32768
            model.config.max_position_embeddings = cfg.context_len
        if cfg.grad_checkpointing:  # transformers 5.24 renamed it; 5.17 has only the old name
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    if path != "toy":
        return fsdp.load_pretrained(path, world, cfg.compute_dtype, offload=cfg.offload, configure=configure)
    model = toy.build_model(cfg.tokenizer, cfg.seed if seed is None else seed)
    configure(model)
    return fsdp.shard(model, world, cfg.compute_dtype, offload=cfg.offload)


def load_rows(cfg, world):
    """(train rows, train ids, test rows, test ids): over-long prompts dropped and counted."""
    train = test = None
    if cfg.toy or cfg.test_data == "toy":
        train, test = toy.task_rows(cfg.task, cfg.seed, cfg.eval_prompts or toy.TEST_ROWS)
    train = train if cfg.toy else data.load_rows(cfg.data)
    test = test if cfg.test_data == "toy" else None if cfg.test_data == "none" else data.load_rows(cfg.test_data)
    test = (test or [])[: cfg.eval_prompts or None]
    if cfg.task == "genrm":
        genrm.check_critic_rows(train, cfg.data)
        genrm.check_critic_rows(test, cfg.test_data)
    if cfg.task == "sft" and not cfg.toy:
        data.load_sft_rows(cfg.data)  # checks every row has its target (extra_info.response)
    train, train_ids, dropped = data.encode_rows(cfg.tokenizer, train, cfg.max_prompt_len)
    test, test_ids, dropped_test = data.encode_rows(cfg.tokenizer, test, cfg.max_prompt_len)
    if dropped or dropped_test:
        world.say(f"dropped over-long prompts (> {cfg.max_prompt_len} tokens): train {dropped}, test {dropped_test}")
    if not train:
        raise ValueError(f"{cfg.data}: no prompt fits --max-prompt-len {cfg.max_prompt_len}")
    if not test:
        world.say("no test data (--test-data none): nothing will be evaluated")
    return train, train_ids, test, test_ids


def check_budgets(cfg, context, judge_context=None, judge_template=0):
    """Every length budget against the context it must fit: a clear error, never a silent cut or skip."""
    if cfg.max_prompt_len + cfg.max_response_len > context:
        raise SystemExit(f"config error: --max-prompt-len {cfg.max_prompt_len} + --max-response-len "
                         f"{cfg.max_response_len} > the model's context {context} (raise it with --context-len)")
    if judge_context:  # the critique prompt holds the problem, the answer and the whole response, plus its template
        need = cfg.max_prompt_len + cfg.max_response_len + judge_template + cfg.genrm_max_tokens
        if need > judge_context:
            raise SystemExit(f"config error: the GenRM needs ~{need} tokens (prompt {cfg.max_prompt_len} + response "
                             f"{cfg.max_response_len} + template {judge_template} + --genrm-max-tokens "
                             f"{cfg.genrm_max_tokens}) > its context {judge_context} (--genrm-context-len, or smaller "
                             "budgets); a longer critique prompt at run time is counted as judge_failed")


@contextlib.contextmanager
def no_judge():
    yield None


def make_judge(cfg, world, which):
    """A context manager factory: `with judge() as j:` readies a GenRM on every rank (an in-process one is
    gathered once) and yields something with genrm's judge interface, or None for no judging."""
    if which == "none":
        return no_judge
    if which == "oracle":
        return lambda: contextlib.nullcontext(toy.OracleJudge())
    if which.startswith(("http://", "https://")):
        service = genrm_http.HTTPJudge(which, cfg.genrm_model or "genrm", cfg.genrm_max_tokens, cfg.genrm_temperature,
                                  cfg.genrm_top_p, concurrency=cfg.genrm_concurrency, timeout=cfg.genrm_timeout,
                                  retries=cfg.genrm_retries)
        return lambda: contextlib.nullcontext(service)
    tok = AutoTokenizer.from_pretrained(which)
    judge_context = cfg.genrm_context_len or AutoConfig.from_pretrained(which).max_position_embeddings
    template = len(data.encode_prompt(tok, genrm.genrm_prompt("", "", [""]))) + 16  # + slack for the answer
    check_budgets(cfg, cfg.context, judge_context, template)
    model = fsdp.load_pretrained(which, world, cfg.compute_dtype, configure=lambda m: setattr(
        m.config, "max_position_embeddings", judge_context)).eval()
    model.requires_grad_(False)  # frozen: FAPO does not train the GenRM it judges with
    judge = genrm.ModelJudge(model, tok, max_new_tokens=cfg.genrm_max_tokens, temperature=cfg.genrm_temperature,
                             top_p=cfg.genrm_top_p, seed=cfg.seed, device=world.device, eos_ids=eos_ids(model, tok),
                             max_tokens_in_flight=cfg.max_tokens_in_flight or None)

    @contextlib.contextmanager
    def ready():
        with fsdp.gathered(model):
            yield judge
    return ready


def make_reward_fn(cfg):
    """The one reward seam: reward_fn(rows, texts, lengths, judge) -> fapo.Scores. FAPO's for --task rl,
    the GenRM's stepwise critic reward for --task genrm; DAPO's overlong shaping on both, as officially."""
    if cfg.task == "genrm":
        def critic_reward(rows, texts, lengths, judge=None):
            rewards, sums, preds = genrm.critic_rewards(rows, texts)
            right = [r > 0 for r in rewards]  # the flawed/clean verdict was right (outcome +1)
            if cfg.overlong_buffer:
                rewards = [r + fapo.overlong_penalty(n, cfg.max_response_len, cfg.overlong_buffer, cfg.overlong_factor)
                           for r, n in zip(rewards, lengths)]
            return fapo.Scores(rewards, right, preds, sums, list(texts))
        return critic_reward

    def fapo_rewards(rows, texts, lengths, judge=None):
        return fapo.score_rollouts(texts, [r.ground_truth for r in rows], [data.problem_text(r) for r in rows],
                                   genrm=judge, lam=cfg.fapo_lambda, lengths=lengths, max_len=cfg.max_response_len,
                                   overlong_buffer=cfg.overlong_buffer, overlong_factor=cfg.overlong_factor)
    return fapo_rewards


def eos_ids(model, tok):
    """Every id that ends a response: the tokenizer's EOS and the model's generation-config EOS ids."""
    gen = getattr(model.generation_config, "eos_token_id", None) if model.generation_config else None
    return sorted({tok.eos_token_id} | set(gen if isinstance(gen, list) else [gen]) - {None})


# ---- one RL step ----

def sample(model, prompt_ids, n, cfg, seed, world, temperature=None, top_p=None):
    """n completions per prompt from the gathered (unsharded) model, with a generator of its own."""
    gen = torch.Generator(device=world.device).manual_seed(seed)
    training = model.training
    model.eval()  # HF turns the KV cache off under gradient checkpointing in train mode
    with fsdp.gathered(model):  # every rank gathers, even one with nothing to sample (it is a collective)
        out = [] if not prompt_ids else sampler.generate(
            model, prompt_ids, cfg.max_response_len, temperature=cfg.temperature if temperature is None else temperature,
            top_p=cfg.top_p if top_p is None else top_p, top_k=cfg.top_k, eos_token_id=cfg.eos_ids,
            pad_token_id=cfg.pad_id, n=n, generator=gen, max_tokens_in_flight=cfg.max_tokens_in_flight or None,
            context_len=cfg.context, fast={"auto": None, "on": True, "off": False}[cfg.fast_sampler])
    model.train(training)
    return out


@functools.lru_cache(maxsize=2)
def epoch_order(seed, epoch, n):
    """The data order of one epoch: a seeded permutation, the same on every rank."""
    return random.Random(seed * 1_000_003 + epoch).sample(range(n), n)


def step_batch(n_rows, step, cfg, world):
    """This rank's row indices for a step (its slice of the step's prompts; resumable from the step)."""
    per_rank = cfg.prompts_per_step // world.size
    start = step * cfg.prompts_per_step + world.rank * per_rank
    return [epoch_order(cfg.seed, i // n_rows, n_rows)[i % n_rows] for i in range(start, start + per_rank)]


class Prefetched:
    """A judge whose verdicts were requested while the step was still decoding: called by the reward
    function with the correct rollouts (in the same order they were sent), it waits and hands them over."""

    def __init__(self, pending):
        self.pending = pending

    def __call__(self, problems, ground_truths, step_lists):
        verdicts = [v for p in self.pending for v in p.result()]
        if len(verdicts) != len(step_lists):
            raise RuntimeError(f"prefetched {len(verdicts)} verdicts for {len(step_lists)} correct rollouts")
        return verdicts


def rollouts(step, idx, run, judge):
    """(completions, judge for the reward): the step's rollouts. With a judge that works in the background
    (a GenRM service: HTTPJudge.submit), the prompts are decoded in --overlap-waves waves and each wave's
    correct rollouts are sent off as soon as it is done, so judging overlaps decoding."""
    cfg, world = run.cfg, run.world
    seed = derive_seed(cfg.seed, "rollout", step, world.rank)
    prompts = [run.ids[i] for i in idx]
    if not hasattr(judge, "submit") or cfg.overlap_waves <= 1 or cfg.task == "genrm":
        return sample(run.model, prompts, cfg.rollouts, cfg, seed, world), judge
    comps, pending = [], []
    per_wave = math.ceil(len(idx) / cfg.overlap_waves)
    for w in range(cfg.overlap_waves):  # the same number of waves on every rank: sampling gathers the model
        part = list(range(w * per_wave, min((w + 1) * per_wave, len(idx))))
        got = sample(run.model, [prompts[k] for k in part], cfg.rollouts, cfg, derive_seed(seed, w), world)
        rows = [run.rows[idx[k]] for k in part for _ in range(cfg.rollouts)]
        texts = [cfg.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in got]
        right = [j for j, (r, x) in enumerate(zip(rows, texts)) if data.verify(x, r.ground_truth)[0]]
        pending.append(judge.submit([data.problem_text(rows[j]) for j in right], [rows[j].ground_truth for j in right],
                                    [data.split_steps(texts[j]) for j in right]))
        comps += got
    return comps, Prefetched(pending)


def rl_step(step, run):
    """One GRPO step: sample, score, advantages, update. Returns the step's metrics (global)."""
    cfg, world, model = run.cfg, run.world, run.model
    idx = step_batch(len(run.rows), step, cfg, world)
    t0 = time.time()
    with run.judge() as judge:
        if hasattr(judge, "reseed"):  # a sampling GenRM draws from a per-step stream: resume repeats it
            judge.reseed(derive_seed(cfg.seed, "judge", step, world.rank))
        comps, reward_judge = rollouts(step, idx, run, judge)
        t1 = time.time()
        rows = [run.rows[i] for i in idx for _ in range(cfg.rollouts)]
        texts = [cfg.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in comps]
        lengths = [len(c.tokens) for c in comps]
        scores = run.reward_fn(rows, texts, lengths, reward_judge)  # t_judge: the wait for verdicts
    t2 = time.time()
    if cfg.dump_every and (step + 1) % cfg.dump_every == 0:
        dump(run, "rl", step + 1, rows, texts, comps, scores, cfg.rollouts, f"rl_step{step + 1}")
    groups = [step * cfg.prompts_per_step + world.rank * len(idx) + k // cfg.rollouts for k in range(len(comps))]
    adv = grpo.group_advantages(torch.tensor(scores.rewards), groups, norm_by_std=bool(cfg.norm_adv_by_std)).tolist()
    samples = [grpo.Sample(run.ids[i], c.tokens, a, sampler_logp=c.logprobs)
               for i, c, a in zip([i for i in idx for _ in range(cfg.rollouts)], comps, adv)]
    dropped = 0
    if cfg.dynamic_sampling:  # DAPO: a group with equal rewards carries no signal; drop it (no refill)
        rw = scores.rewards
        keep = [g for g in range(len(idx)) if len(set(rw[g * cfg.rollouts:(g + 1) * cfg.rollouts])) > 1]
        dropped = len(idx) - len(keep)
        kept = [samples[g * cfg.rollouts + k] for g in keep for k in range(cfg.rollouts)]
        # pad to the same count on every rank with zero-weight copies: FSDP needs equal pass counts
        target = int(world.max([len(kept)])[0])
        samples = kept + [grpo.Sample(samples[0].prompt, samples[0].response, 0.0, weight=0.0)
                          for _ in range(target - len(kept))]
    upd = grpo.policy_update(model, run.optimizer, samples, run.settings, world, run.ref_model) if samples else {}
    run.scheduler.step()
    t3 = time.time()
    keys = sorted(scores.counts)  # the same keys on every rank: one all-reduce for everything
    shape = rollout_shape(scores, lengths, cfg.rollouts)
    tot = dict(zip(["reward", "length", "dropped"] + keys + list(shape),
                   world.sum([sum(scores.rewards), sum(lengths), dropped] + [float(scores.counts[k]) for k in keys]
                             + list(shape.values()))))
    rates = genrm.critic_batch_metrics(tot) if cfg.task == "genrm" else fapo.rollout_metrics(tot)
    rates["zero_var_groups"] = tot["zero_var"] / max(tot["groups"], 1)  # groups with no signal for GRPO
    for kind in ("correct", "wrong", "flawed"):
        rates[f"length_{kind}"] = tot[f"len_{kind}"] / max(tot[f"n_{kind}"], 1)
    if cfg.task == "rl":
        check_judge(tot, step, world)
    return {"step": step + 1, "reward": tot["reward"] / tot["n"], "response_length": tot["length"] / tot["n"],
            "groups_dropped": int(tot["dropped"]), "lr": run.scheduler.get_last_lr()[0],
            "t_sample": t1 - t0, "t_judge": t2 - t1, "t_train": t3 - t2, "judge_share": (t2 - t1) / max(t3 - t0, 1e-9),
            **upd, **rates, **peak_memory(world)}


def peak_memory(world):
    """The step's peak GPU memory on this rank (GiB), then reset; nothing on CPU."""
    if world.device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(world.device) / 2**30
    torch.cuda.reset_peak_memory_stats(world.device)
    return {"peak_gib": world.max([peak])[0]}


def rollout_shape(scores, lengths, group):
    """Sums for the step's log: groups whose rewards are all equal, and response lengths of correct, wrong and
    flawed (correct but flagged) rollouts."""
    n = len(scores.rewards) // group
    zero_var = sum(len(set(scores.rewards[g * group:(g + 1) * group])) == 1 for g in range(n))
    flawed = [bool(c and f) for c, f in zip(scores.correct, scores.flagged)]
    kinds = {"correct": scores.correct, "wrong": [not c for c in scores.correct], "flawed": flawed}
    out = {"zero_var": float(zero_var), "groups": float(n)}
    for kind, mask in kinds.items():
        out[f"len_{kind}"] = float(sum(L for L, m in zip(lengths, mask) if m))
        out[f"n_{kind}"] = float(sum(mask))
    return out


def check_judge(tot, step, world):
    """A GenRM that answers nothing must not turn FAPO into a silent baseline."""
    if tot["judged"] and tot["judge_failed"] == tot["judged"]:
        raise RuntimeError(f"step {step + 1}: every one of {int(tot['judged'])} GenRM requests failed (no verdict); "
                           "stopping rather than training on the baseline reward. Is the GenRM up?")
    if tot["judged"] >= 8 and tot["unparseable"] > tot["judged"] / 2:
        world.say(f"warning: step {step + 1}: {int(tot['unparseable'])} of {int(tot['judged'])} GenRM verdicts were "
                  "unparseable (no \\boxed{index}); they count as clean")


def dump(run, phase, step, rows, texts, comps, scores, per_prompt, name):
    """OUT/dumps/NAME.jsonl: every rollout of rank 0's first --dump-prompts prompts, with its reward,
    rule verdict, the GenRM's verdict and critique. `python bench/flawed.py FILE` shows the flawed positives."""
    cfg = run.cfg
    if not run.world.main or not cfg.dump_prompts:
        return
    n = cfg.dump_prompts * per_prompt  # rollouts are prompt-major: the first prompts' samples come first
    os.makedirs(os.path.join(cfg.out, "dumps"), exist_ok=True)
    lines = [json.dumps({"phase": phase, "step": step, "prompt": data.problem_text(r) if cfg.task != "genrm" else "",
                         "response": x, "reward": scores.rewards[k], "correct": bool(scores.correct[k]),
                         "genrm_index": scores.first_error[k], "critique": scores.critiques[k] if scores.critiques else "",
                         "length": len(c.tokens), "finish_reason": c.finish_reason, "data_source": r.data_source,
                         "ground_truth": str(r.ground_truth)})
             for k, (r, x, c) in enumerate(zip(rows[:n], texts, comps))]
    fsdp.write_atomic(os.path.join(cfg.out, "dumps", f"{name}.jsonl"), "".join(l + "\n" for l in lines))


# ---- the loops: SFT cold start, then RL ----

class Run:
    """What one training phase holds: config, world, model, data, judge, reward, optimizer."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def make_optimizer(model, lr, warmup, cfg):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    # deviation from verl: warm-up reaches lr/warmup at the first step (verl's starts at 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    return opt, sched


def sft_pairs(cfg, step, world):
    """This rank's (prompt ids, response ids + EOS) for an SFT step (toy traces are made on the fly)."""
    rng = random.Random(derive_seed(cfg.seed, "sft", step, world.rank))
    tok, pairs = cfg.tokenizer, []
    for _ in range(cfg.sft_batch // world.size):
        if cfg.toy and cfg.task == "genrm":  # toy GenRM cold start: checker-written critiques
            prompt, response = toy.critic_sft_example(rng)
        elif cfg.toy:
            prompt, response = toy.sft_example(rng, cfg.sft_flawed_share, cfg.toy_regime, cfg.sft_slip_share)
        else:  # user data: the target is extra_info.response
            row = cfg.sft_rows[rng.randrange(len(cfg.sft_rows))]
            prompt, response = row.prompt, row.extra_info["response"]
        response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        pairs.append((data.encode_prompt(tok, prompt), response_ids))
    return pairs


def run_sft(run, out_dir):
    """The cold start. Returns its final evaluation (read back from metrics.jsonl when already done)."""
    cfg, world = run.cfg, run.world
    optimizer, scheduler = make_optimizer(run.model, cfg.sft_lr, cfg.sft_warmup, cfg)
    ckpt, start = resume(run, optimizer, scheduler, out_dir)
    log = Logger(out_dir, world, cfg.sft_steps, start, "sft", cfg)
    settings = update_settings(cfg, "sft")
    bad = 0
    for step in range(start, cfg.sft_steps):
        t0 = time.time()
        m = grpo.sft_update(run.model, optimizer, sft_pairs(cfg, step, world), settings, world)
        scheduler.step()
        m = log.log({"step": step + 1, **m, "lr": scheduler.get_last_lr()[0], "t_train": time.time() - t0})
        bad = check_numerics(m, bad, cfg)
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.sft_steps:
            ckpt.save(run.model, optimizer, scheduler, {"step": step + 1})
        if cfg.export_every and (step + 1) % cfg.export_every == 0:
            ckpt.export(run.model, cfg.tokenizer, step + 1)
    ckpt.export(run.model, cfg.tokenizer, cfg.sft_steps)  # OUT/hf: the phase's weights (once, also after a resume)
    result = log.find_eval("after_sft") or log.log(run.evaluate("after_sft"))
    log.close()
    return result


def run_rl(run, out_dir, first=None):
    """The RL phase: evaluate, then steps with periodic evaluation and checkpoints. Returns (first, last) evals."""
    cfg, world = run.cfg, run.world
    run.optimizer, run.scheduler = make_optimizer(run.model, cfg.lr, cfg.warmup, cfg)
    run.settings = update_settings(cfg)
    run.ref_model = None
    if cfg.kl_coef > 0:  # the reference is the starting policy, frozen (not built when the coefficient is 0)
        run.ref_model = fsdp.frozen_copy(run.model, world, cfg.compute_dtype, cfg.offload)  # before resume()
    ckpt, start = resume(run, run.optimizer, run.scheduler, out_dir)
    log = Logger(out_dir, world, cfg.steps, start, "rl", cfg)
    first = log.find_eval("start") or first or log.log(run.evaluate("start"))
    if first.get("eval") != "start" and start == 0:
        log.log({**first, "eval": "start"})  # the cold start's final eval is RL's starting point
    last, bad = first, 0
    for step in range(start, cfg.steps):
        m = log.log(rl_step(step, run))
        bad = check_numerics(m, bad, cfg)
        done = step + 1 == cfg.steps
        if done or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
            last = log.log({**run.evaluate(f"step{step + 1}"), "step": step + 1})
        if done or (cfg.save_every and (step + 1) % cfg.save_every == 0):
            ckpt.save(run.model, run.optimizer, run.scheduler, {"step": step + 1})
        if cfg.export_every and (step + 1) % cfg.export_every == 0:
            ckpt.export(run.model, cfg.tokenizer, step + 1)
    ckpt.export(run.model, cfg.tokenizer, cfg.steps)  # OUT/hf: the phase's weights (once, also after a resume)
    log.close()
    return first, last


def resume(run, optimizer, scheduler, out_dir):
    """(checkpointer, step to start at): with --resume, the last checkpoint's weights and optimizer state."""
    ckpt = fsdp.Checkpointer(out_dir, run.world)
    state = ckpt.load(run.model, optimizer, scheduler) if run.cfg.resume else None
    return ckpt, state["step"] if state else 0


def check_numerics(m, bad, cfg):
    """Consecutive steps whose update was skipped for a non-finite gradient; too many stop the run."""
    bad = bad + 1 if m.get("skipped_updates") else 0
    if bad >= cfg.max_bad_steps:
        raise FloatingPointError(f"{bad} consecutive steps with a non-finite loss or gradient (last: step "
                                 f"{m.get('step', '?')}); stopping. The last checkpoint holds the last good weights.")
    return bad


# ---- evaluation ----

def evaluate_policy(run, rows, ids, tag):
    """Per data_source and pooled: avg@n accuracy, unbiased pass@k, flawed ratio (judged by the eval judge),
    unparseable verdicts, mean response length. n is --eval-samples, or the source's --eval-repeats."""
    cfg, world = run.cfg, run.world
    mine = list(range(world.rank, len(rows), world.size))
    by_n = {}
    for i in mine:
        by_n.setdefault(samples_for(rows[i].data_source, cfg), []).append(i)
    per = {}  # source -> summed counts
    for n, group in sorted(by_n.items()):
        seed = cfg.seed + 7919 * world.rank + (0 if n == cfg.eval_samples else 104729 * n)
        comps = sample(run.model, [ids[i] for i in group], n, cfg, seed, world, cfg.eval_temperature, cfg.eval_top_p)
        texts = [cfg.tokenizer.decode(c.tokens, skip_special_tokens=True) for c in comps]
        rr = [rows[i] for i in group for _ in range(n)]
        with run.eval_judge() as judge:
            s = run.eval_reward_fn(rr, texts, [len(c.tokens) for c in comps], judge)
        if n == min(by_n):  # one dump per eval: the first prompts of the most common setting
            dump(run, "eval", step_of(tag), rr, texts, comps, s, n, f"eval_{tag}")
        for j, i in enumerate(group):
            c = per.setdefault(rows[i].data_source, {"prompts": 0, "n": 0, "correct": 0, "flagged": 0, "judged": 0,
                                                     "unparseable": 0, "passk": 0.0, "tokens": 0})
            part = range(j * n, (j + 1) * n)
            c["prompts"] += 1
            c["n"] += n
            c["correct"] += sum(s.correct[k] for k in part)
            c["flagged"] += sum(s.first_error[k] not in (None, -1) for k in part)
            c["judged"] += sum(s.first_error[k] is not None or (s.correct[k] and judge is not None) for k in part)
            c["unparseable"] += sum(s.correct[k] and judge is not None and s.first_error[k] is None for k in part)
            c["passk"] += fapo.pass_at_k(n, sum(s.correct[k] for k in part), cfg.pass_k)
            c["tokens"] += sum(len(comps[k].tokens) for k in part)
    return {"eval": tag, **eval_metrics(per, cfg, world)}


def step_of(tag):
    return int(tag[4:]) if tag.startswith("step") and tag[4:].isdigit() else 0


def samples_for(source, cfg):
    return next((n for key, n in cfg.eval_repeat_map.items() if key in source), cfg.eval_samples)


def eval_metrics(per, cfg, world):
    """Sum each source's counts over ranks (every rank must know every source), then rates."""
    every = [None] * world.size
    dist.all_gather_object(every, sorted(per))
    sources = sorted({s for part in every for s in part})
    fields = ["prompts", "n", "correct", "flagged", "judged", "unparseable", "passk", "tokens"]
    flat = world.sum([float(per.get(s, {}).get(f, 0)) for s in sources for f in fields])
    tot = {s: dict(zip(fields, flat[i * len(fields):(i + 1) * len(fields)])) for i, s in enumerate(sources)}

    def rates(c, n_label):
        return {f"acc@{n_label}": c["correct"] / max(c["n"], 1), "flawed_ratio": c["flagged"] / max(c["correct"], 1),
                f"pass@{cfg.pass_k}": c["passk"] / max(c["prompts"], 1), "response_length": c["tokens"] / max(c["n"], 1),
                "unparseable": c["unparseable"] / max(c["judged"], 1)}
    pooled = {f: sum(t[f] for t in tot.values()) for f in fields}
    out = {f"eval_{k}": v for k, v in rates(pooled, cfg.eval_samples).items() if k != "unparseable"}
    out["eval_unparseable"] = rates(pooled, 1)["unparseable"]
    if len(sources) > 1:
        for s in sources:
            out.update({f"eval_{s}/{k}": v for k, v in rates(tot[s], samples_for(s, cfg)).items()})
    return out


def evaluate_critic(run, rows, ids, tag):
    """Verdicts on held-out critique rows -> genrm.critic_metrics (ProcessBench, FlawedPositiveBench)."""
    cfg, world = run.cfg, run.world
    mine = list(range(world.rank, len(rows), world.size))
    comps = sample(run.model, [ids[i] for i in mine], 1, cfg, seed=cfg.seed, world=world,
                   temperature=cfg.eval_temperature, top_p=cfg.eval_top_p)
    preds = [(i, genrm.parse_index(cfg.tokenizer.decode(c.tokens, skip_special_tokens=True),
                                   rows[i].extra_info["total_steps"])) for i, c in zip(mine, comps)]
    every = [None] * world.size
    dist.all_gather_object(every, preds)
    preds = dict(p for part in every for p in part)
    m = genrm.critic_metrics([preds[i] for i in range(len(rows))], [r.ground_truth for r in rows])
    return {"eval": tag, **{f"eval_{k}": v for k, v in m.items()}}


# ---- main ----

def main(argv=None):
    cfg = parse_config(argv)
    world = fsdp.World()
    for name, total in (("prompts-per-step", cfg.prompts_per_step), ("sft-batch", cfg.sft_batch)):
        if total % world.size:
            raise SystemExit(f"config error: --{name} {total} must be divisible by the world size {world.size}")
    cfg.compute_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and world.device.type == "cuda") \
        else torch.float32
    cfg.tokenizer = toy.tokenizer() if cfg.model == "toy" else AutoTokenizer.from_pretrained(cfg.model)
    cfg.sft_rows = data.load_sft_rows(cfg.data) if cfg.task == "sft" and not cfg.toy else None
    rows, ids, test, test_ids = load_rows(cfg, world)  # bad data fails here, before anything is written

    model = load_model(cfg, world)
    cfg.context = model.config.max_position_embeddings
    check_budgets(cfg, cfg.context)
    tok = cfg.tokenizer  # pad may equal EOS: masks never look at it; every EOS id of the model stops a rollout
    cfg.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cfg.eos_ids = eos_ids(model, tok)
    lock = fsdp.claim_output_dir(cfg.out, world, resume=cfg.resume, overwrite=cfg.overwrite)
    if cfg.resume:
        check_resumable(cfg, world)
    if world.main:
        shown = {k: v for k, v in vars(cfg).items() if k not in ("tokenizer", "sft_rows", "compute_dtype")}
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump({**shown, "world_size": world.size, "device": str(world.device)}, f, indent=1, default=str)
        print("config: " + json.dumps(shown, default=str), flush=True)

    judge = no_judge if cfg.task == "genrm" else make_judge(cfg, world, cfg.genrm)
    if cfg.toy and cfg.genrm not in ("none", "oracle") and cfg.task == "rl":  # audit a learned GenRM on the toy
        inner = judge
        judge = lambda: _audited(inner)  # noqa: E731
    # eval measures the flawed ratio with the exact checker on toy data, else with the training GenRM
    eval_judge = make_judge(cfg, world, "oracle") if cfg.test_data == "toy" and cfg.task != "genrm" else judge
    run = Run(cfg=cfg, world=world, model=model, rows=rows, ids=ids, judge=judge, reward_fn=make_reward_fn(cfg),
              eval_judge=eval_judge, eval_reward_fn=make_reward_fn(cfg))
    evaluate = evaluate_critic if cfg.task == "genrm" else evaluate_policy
    run.evaluate = lambda tag: evaluate(run, test, test_ids, tag) if test else {"eval": tag}

    t0 = time.time()
    if cfg.task == "sft":
        before, after = None, run_sft(run, cfg.out)
    elif cfg.model != "toy":
        before, after = run_rl(run, cfg.out)
    else:  # the built-in demo: a random toy model needs a cold start before RL can find any reward
        what = "checker-written critiques" if cfg.task == "genrm" else f"toy traces ({cfg.sft_flawed_share:.0%} flawed)"
        world.say(f"[1/2] SFT cold start: {cfg.sft_steps} steps x {cfg.sft_batch} {what}")
        before = run_sft(run, os.path.join(cfg.out, "sft"))
        reward = "stepwise GenRM reward" if cfg.task == "genrm" else f"FAPO, lambda {cfg.fapo_lambda}, GenRM {cfg.genrm}"
        world.say(f"[2/2] GRPO ({reward}): {cfg.steps} steps x {cfg.prompts_per_step} prompts x {cfg.rollouts} rollouts")
        _, after = run_rl(run, os.path.join(cfg.out, "rl"), first=before)
    if world.main:
        print_table(before, after, time.time() - t0)
    lock.release()
    dist.destroy_process_group()


# settings a checkpoint restores (the optimizer's and scheduler's): changing one on resume would be ignored
RESTORED = ("lr", "sft_lr", "warmup", "sft_warmup", "weight_decay", "betas", "seed", "model", "task", "preset")


def check_resumable(cfg, world):
    """Refuse a resume whose optimizer settings differ from the run's: they come back from the checkpoint,
    so a changed --lr would be silently ignored while config.json recorded it. Rank 0 decides for all."""
    path, msg = os.path.join(cfg.out, "config.json"), [""]
    if world.main and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        changed = [k for k in RESTORED if k in old and json.loads(json.dumps(getattr(cfg, k))) != old[k]]
        msg[0] = ", ".join(f"--{k.replace('_', '-')} ({old[k]} -> {getattr(cfg, k)})" for k in changed)
    dist.broadcast_object_list(msg, src=0)
    if msg[0]:
        raise SystemExit(f"config error: resuming with changed {msg[0]}: the checkpoint restores these; "
                         "start a new run (--out) to change them")


@contextlib.contextmanager
def _audited(ready):
    with ready() as judge:
        yield toy.AuditedJudge(judge)


# ---- logging ----

class Logger:
    """metrics.jsonl (one object per step or eval) and a tqdm bar, on rank 0 only. On resume the file is
    cut back to the checkpoint's step, so every step appears once."""

    def __init__(self, out_dir, world, total, start, desc, cfg):
        self.main, self.path, self.bar = world.main, os.path.join(out_dir, "metrics.jsonl"), None
        os.makedirs(out_dir, exist_ok=True)
        self.records = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.records = [json.loads(line) for line in f if line.strip()]
            self.records = [m for m in self.records if m.get("step", 0) <= start]
            if self.main:
                fsdp.write_atomic(self.path, "".join(json.dumps(m) + "\n" for m in self.records))
        if world.main and not cfg.no_progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, file=sys.stdout)
        self.wandb, self.last_step = None, start  # optional mirror to Weights & Biases (--wandb PROJECT)
        if cfg.wandb and world.main:  # rank 0 only: one W&B run per phase, grouped by the run directory
            try:
                import wandb  # WANDB_MODE=offline needs no network
            except ImportError:
                print("--wandb: the wandb package is not installed (pip install wandb); metrics.jsonl only", flush=True)
            else:
                run_dir = os.path.dirname(os.path.abspath(out_dir))
                shown = {k: v for k, v in vars(cfg).items() if k not in ("tokenizer", "sft_rows", "compute_dtype")}
                self.wandb = wandb.init(project=cfg.wandb, dir=out_dir, group=os.path.basename(run_dir),
                                        name=f"{os.path.basename(run_dir)}/{desc}", job_type=desc,
                                        config=json.loads(json.dumps(shown, default=str)))

    def find_eval(self, tag):
        return next((m for m in self.records if m.get("eval") == tag), None)

    def log(self, m, show=("reward", "acc", "flawed_ratio", "unparseable", "judge_failed", "loss", "verdict_acc")):
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


def print_table(before, after, seconds):
    print(f"\n{'metric':<28}{'before':>10}{'after':>10}")
    for k in [k for k in after or {} if k.startswith("eval_") and "/" not in k and not k.startswith("eval_n")
              and k != "eval_unparseable"]:
        print(f"{k[5:]:<28}{(before or {}).get(k, float('nan')):>10.3f}{after[k]:>10.3f}")
    print(f"({seconds:.0f} s)")


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
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a finished torchrun worker skips the interpreter's teardown: there
        sys.stdout.flush()  # torch's C++ threads abort it now and then (SIGABRT, "terminate called without an active
        sys.stderr.flush()  # exception": 2 of 12 two-process runs here), failing a run whose work is all written
        os._exit(0)
