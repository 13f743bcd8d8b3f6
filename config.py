"""config.py -- train.py's flags: literal defaults (the paper's, for real data) < a named preset < your flags.

    cfg = parse_config(argv)        parsed, merged, derived, validated: before anything is loaded or written
    check_budgets(cfg, context)     every length budget against the model's (and the GenRM's) context
    update_settings(cfg, pad_id)    the flags grpo's update reads, as grpo.UpdateSettings
    python train.py --help          the flags, in groups (run, rollouts, reward, update, optimiser, SFT, toy, eval)

A room of its own because it is long and a reader of the method can skip it: train.py reads `cfg.lr`, this
file says where the value came from. The presets are visible dicts: the toy demo's, and one per official run
script (recipe/fapo/run_*.sh; tests/test_config.py holds them to the scripts' values).

Defaults adapt, explicit flags are refused: a default that conflicts with a flag you gave is derived from it
(the mini-batch divides --prompts-per-step, the overlong buffer fits --max-response-len, pass@k fits the eval
samples) and the printed config says so in `derived`; only a conflict between flags you gave stops the run.
"""
import argparse
import json
import math
import os

import arith
import grpo
import toy
from sampler import TOKENS_IN_FLIGHT

# a served GenRM's slowest plausible decode of one critique (a 4B model on a loaded vLLM / SGLang server
# decodes one sequence at ~50-100 tokens/s): --genrm-timeout's derived default, max(60 s, max tokens / 50)
GENRM_TOKENS_PER_S = 50.0
GENRM_MIN_TIMEOUT = 60.0

BUILTIN_TASKS = ("toy", "arith")  # --data names that are tasks of this repo (toy.py, arith.py), not files

# ---- presets ----

# verl's official FAPO scripts, the values every 7B/32B/GenRM preset shares
_OFFICIAL = dict(prompts_per_step=512, mini_batch_prompts=32, rollouts=8, temperature=1.0, top_p=1.0, top_k=0,
                 max_prompt_len=2048, max_response_len=8192, overlong_buffer=4096, overlong_factor=1.0,
                 lr=1e-6, warmup=10, weight_decay=0.1, grad_clip=1.0, clip_low=0.2, clip_high=0.28, clip_c=10.0,
                 loss_agg="token-mean", kl_coef=0.0, eval_temperature=1.0, eval_top_p=0.7, eval_samples=1, pass_k=1,
                 eval_every=10, save_every=0, grad_checkpointing=True, offload=True, max_tokens_in_flight=0,
                 micro_batch_tokens=(2048 + 8192) * 2, logprob_batch_tokens=(2048 + 8192) * 3,
                 judge_prompt="official", verdict_parse="official")  # GenRM sampling: unset, the server's
PRESETS = {
    # the built-in demo (docs/results.md): a 0.5M-parameter model needs a bigger lr and a cold start
    "toy": dict(steps=100, prompts_per_step=16, mini_batch_prompts=0, rollouts=8, lr=2e-4, max_prompt_len=64,
                max_response_len=48, overlong_buffer=0, eval_every=25, save_every=50, sft_steps=800, sft_batch=64,
                sft_lr=1e-3, genrm_max_tokens=96, genrm_temperature=0.0, eval_samples=4, eval_top_p=1.0,
                judge_prompt="critic", verdict_parse="strict", micro_batch=64, micro_batch_tokens=0,
                logprob_batch_tokens=0, grad_checkpointing=False, offload=False, eval_prompts=256, max_tokens_in_flight=0),
    # toy GenRM: 8 rollouts at temperature 1.0 and lr 3e-5 instead of the paper's 16 / 1.2 / 1e-6: a 0.5M model
    # sampled at 1.2 makes copying slips that swamp the verdict signal (measured: F1 0.97 -> 0.89 in 60 steps)
    "toy-genrm": dict(steps=60, prompts_per_step=16, mini_batch_prompts=0, rollouts=8, lr=3e-5, max_prompt_len=256,
                      max_response_len=96, overlong_buffer=0, eval_every=20, save_every=50, sft_steps=500, sft_batch=32,
                      sft_lr=1e-3, eval_samples=4, eval_temperature=0.0, eval_top_p=1.0, micro_batch=64,
                      judge_prompt="critic", verdict_parse="strict",
                      micro_batch_tokens=0, logprob_batch_tokens=0, grad_checkpointing=False, offload=False,
                      eval_prompts=256, max_tokens_in_flight=0),
    # run_fapo_7b.sh: Qwen2.5-Math-7B, FAPO-GenRM-4B judging with its server's default sampling (16k new tokens)
    "fapo-7b": dict(_OFFICIAL, steps=200, context_len=32768, genrm_max_tokens=16384, fapo_lambda=1.0),
    "baseline-7b": dict(_OFFICIAL, steps=200, context_len=32768, genrm="none", fapo_lambda=0.0),  # run_baseline_7b.sh
    # run_fapo_32b.sh: 20k-token responses, token budgets of 1x (prompt + response), 600 steps in the script
    "fapo-32b": dict(_OFFICIAL, steps=600, max_response_len=20480, genrm_max_tokens=16384,
                     micro_batch_tokens=2048 + 20480, logprob_batch_tokens=2048 + 20480, fapo_lambda=1.0),
    "baseline-32b": dict(_OFFICIAL, steps=600, max_response_len=20480, genrm="none", fapo_lambda=0.0,  # run_baseline_32b.sh
                         micro_batch_tokens=2048 + 20480, logprob_batch_tokens=2048 + 20480),
    # run_fapo_genrm_train.sh: Qwen3-4B-Instruct-2507 trained as the GenRM on FAPO-Critic
    "genrm-4b": dict(_OFFICIAL, task="genrm", steps=500, rollouts=16, temperature=1.2, max_prompt_len=5120,
                     eval_temperature=0.6, eval_top_p=0.95, save_every=10, context_len=32768,
                     micro_batch_tokens=(5120 + 8192) * 2, logprob_batch_tokens=(5120 + 8192) * 3),
}

# ---- flags ----


def _or_unset(kind):
    """A flag type where 'unset' (its default) reads as None: the value is left to the GenRM's server or its
    generation_config, and --help says so rather than 'None'."""
    def parse(text):
        return None if text == "unset" else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its errors ("invalid float value")
    return parse


def _or_derived(kind):
    """A flag type where 'derived' (its default) reads as None, to be derived by derive_defaults."""
    def parse(text):
        return None if text == "derived" else kind(text)
    parse.__name__ = kind.__name__
    return parse


def build_parser():
    """Every flag, in argparse groups (--help shows the structure) with its literal default."""
    ap = argparse.ArgumentParser(description="GRPO / FAPO training (with its SFT cold start, and GenRM training) "
                                 "under torchrun + FSDP2", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = ap.add_argument_group("run")
    g.add_argument("--preset", default="auto", choices=["auto", "none"] + list(PRESETS),
                   help="a named run (the dicts at the top of config.py); auto: toy / toy-genrm on toy data, else none")
    g.add_argument("--task", default="rl", choices=["rl", "sft", "genrm"],
                   help="rl: GRPO/FAPO on a policy; sft: cross-entropy only; genrm: GRPO on critique rows (the GenRM's "
                        "own reward). With --model toy, rl and genrm start with an SFT cold start (the demo)")
    g.add_argument("--model", default="toy", help="local HF model dir, or 'toy' for a tiny Qwen3 built from a config")
    g.add_argument("--data", default="toy", help="train rows (.jsonl/.json/.parquet, verl schema), 'toy' (the demo) "
                   "or 'arith' (word problems with an exact equation checker, arith.py)")
    g.add_argument("--test-data", default="auto", help="eval rows or 'none'; auto: the built-in task's test split "
                                                       "(arith-val: arith's validation split), none otherwise")
    g.add_argument("--system-prompt", default="keep", help="for prompts without a system message: keep (the chat "
                   "template's default, if any), none (an empty one: no default), or the text of one")
    g.add_argument("--out", default="", help="output dir: config.json, then one folder per phase (sft/, rl/) with "
                                             "metrics.jsonl, checkpoints, exports (default out/TASK)")
    g.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an OUT that holds a previous run")
    g.add_argument("--seed", default=0, type=int, help="seeds model init, data order and every sampling generator")

    g = ap.add_argument_group("rollouts")
    g.add_argument("--steps", default=200, type=int, help="RL steps")
    g.add_argument("--prompts-per-step", default=512, type=int, help="prompts per step, all ranks together")
    g.add_argument("--rollouts", default=8, type=int, help="G: samples per prompt (>= 2: a group of one has no advantage)")
    g.add_argument("--temperature", default=1.0, type=float, help="rollout temperature (> 0: the loss uses the "
                                                                  "same distribution)")
    g.add_argument("--top-p", default=1.0, type=float)
    g.add_argument("--top-k", default=0, type=int, help="0: off")
    g.add_argument("--max-prompt-len", default=2048, type=int, help="longer prompts are dropped and counted, never truncated")
    g.add_argument("--max-response-len", default=8192, type=int, help="new tokens per rollout")

    g = ap.add_argument_group("reward: the rule verifier, FAPO's penalty, the GenRM")
    g.add_argument("--genrm", default="oracle", help="'oracle' (the task's exact checker; toy data only), 'none', a "
                                                     "GenRM model dir, or an OpenAI-compatible endpoint http://HOST:PORT/v1")
    g.add_argument("--fapo-lambda", default=1.0, type=float, help="flawed positives get 1 - lambda; 0 is the baseline "
                                                                  "(the GenRM still judges, so its flawed ratio is measured)")
    g.add_argument("--judge-prompt", default="official", choices=["official", "critic"],
                   help="what the GenRM is shown: official (the recipe's prompt byte for byte, the whole response); "
                        "critic (steps tagged <paragraph_i>, FAPO-Critic's training format). docs/departures.md")
    g.add_argument("--verdict-parse", default="official", choices=["official", "strict"],
                   help="official: int() of the last \\boxed{}, as the recipe reads it (never eval); strict: "
                        "-1..n_steps-1 only, else unparseable. The step log's parse_disagree compares the two")
    g.add_argument("--genrm-temperature", default="unset", type=_or_unset(float),
                   help="GenRM decoding temperature (0: greedy); unset: a server's default, in process the GenRM's "
                        "generation_config (the printed config's genrm_sampling says which)")
    g.add_argument("--genrm-top-p", default="unset", type=_or_unset(float), help="unset: as --genrm-temperature")
    g.add_argument("--genrm-top-k", default="unset", type=_or_unset(int), help="0: off; unset: as --genrm-temperature")
    g.add_argument("--genrm-max-tokens", default=16384, type=int, help="GenRM response budget when judging")
    g.add_argument("--overlong-buffer", default=4096, type=int, help="DAPO overlong buffer (tokens); 0 = off")
    g.add_argument("--overlong-factor", default=1.0, type=float)

    g = ap.add_argument_group("update: advantages, loss")
    g.add_argument("--mini-batch-prompts", default=32, type=int, help="prompts per optimizer update (0: the whole step)")
    g.add_argument("--clip-low", default=0.2, type=float)
    g.add_argument("--clip-high", default=0.28, type=float)
    g.add_argument("--clip-c", default=10.0, type=float, help="dual-clip constant for negative advantages (> 1)")
    g.add_argument("--loss-agg", default="token-mean", choices=list(grpo.AGG_MODES))
    g.add_argument("--norm-adv-by-std", default=1, type=int, choices=[0, 1], help="1: GRPO; 0: Dr. GRPO (s - mean)")
    g.add_argument("--dynamic-sampling", action="store_true", help="DAPO: drop groups whose rewards are all equal")
    g.add_argument("--kl-coef", default=0.0, type=float, help="KL-to-reference loss coefficient (0: no reference model)")
    g.add_argument("--kl-kind", default="k3", choices=["k1", "k2", "k3", "abs"])
    g.add_argument("--tis-cap", default=0.0, type=float, help="truncated importance weight min(pi_old / pi_sampler, C) "
                                                              "on the loss (verl's rollout correction; a departure); 0: off")

    g = ap.add_argument_group("optimiser")
    g.add_argument("--lr", default=1e-6, type=float, help="RL learning rate")
    g.add_argument("--warmup", default=10, type=int, help="linear warm-up steps, then constant")
    g.add_argument("--weight-decay", default=0.1, type=float)
    g.add_argument("--betas", default=[0.9, 0.999], type=float, nargs=2)
    g.add_argument("--grad-clip", default=1.0, type=float)

    g = ap.add_argument_group("SFT (the cold start, or --task sft)")
    g.add_argument("--sft-steps", default=1000, type=int, help="SFT steps")
    g.add_argument("--sft-batch", default=64, type=int, help="sequences per SFT step, all ranks together")
    g.add_argument("--sft-lr", default=1e-5, type=float)
    g.add_argument("--sft-warmup", default=50, type=int)

    toy.add_flags(ap)
    arith.add_flags(ap)

    g = ap.add_argument_group("evaluation and checkpoints")
    g.add_argument("--eval-every", default=10, type=int, help="RL steps between evaluations (0: only at start and end)")
    g.add_argument("--eval-prompts", default=0, type=int, help="test prompts per evaluation (0: all)")
    g.add_argument("--eval-samples", default=4, type=int, help="samples per test prompt (avg@n, pass@k)")
    g.add_argument("--eval-repeats", default="", help="per-source samples, e.g. 'aime=32,gpqa=4' (data_source substring=n)")
    g.add_argument("--eval-temperature", default=1.0, type=float)
    g.add_argument("--eval-top-p", default=0.7, type=float)
    g.add_argument("--pass-k", default=2, type=int, help="k of the unbiased pass@k estimate (k <= samples of every source)")
    g.add_argument("--save-every", default=50, type=int, help="steps between checkpoints (0: only at the end)")

    g = ap.add_argument_group("advanced: memory and speed, the served GenRM's transport, logging (docs/recipes.md)")
    g.add_argument("--context-len", default=0, type=int,
                   help="override the model's max_position_embeddings (rope untouched); 0: keep")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bf16 compute on CUDA, fp32 on CPU")
    g.add_argument("--max-tokens-in-flight", default=TOKENS_IN_FLIGHT, type=int,
                   help="sampler memory cap: rows x (prompt + response) decoded at once, in waves; 0: none")
    g.add_argument("--fast-sampler", default="auto", choices=["auto", "on", "off"],
                   help="the sampler's static-cache decode loop; auto: on CUDA, eager on CPU (docs/sampler.md)")
    g.add_argument("--micro-batch", default=64, type=int, help="rows per forward/backward, when --micro-batch-tokens is 0")
    g.add_argument("--micro-batch-tokens", default=20480, type=int, help="padded tokens per forward/backward; 0: rows")
    g.add_argument("--logprob-batch-tokens", default=30720, type=int, help="padded tokens per no-grad log-prob pass; 0: rows")
    g.add_argument("--skip-zero-advantage", default=1, type=int, choices=[0, 1],
                   help="1: no forward/backward for rollouts whose advantage is 0 (their gradient is exactly 0)")
    g.add_argument("--grad-checkpointing", default=False, action=argparse.BooleanOptionalAction)
    g.add_argument("--offload", default=False, action=argparse.BooleanOptionalAction,
                   help="FSDP2 CPU offload of parameters, gradients and optimizer state (GPU runs)")
    g.add_argument("--overlap-waves", default=4, type=int, help="with a GenRM endpoint: decode in this many waves, "
                                                                "judging each finished wave while the next decodes (1: no overlap)")
    g.add_argument("--genrm-model", default="", help="model name sent to the GenRM endpoint")
    g.add_argument("--genrm-context-len", default=0, type=int, help="override the GenRM's max_position_embeddings; 0: keep")
    g.add_argument("--genrm-concurrency", default=32, type=int, help="requests in flight to a GenRM endpoint, per rank")
    g.add_argument("--genrm-timeout", default="derived", type=_or_derived(float), help="seconds per GenRM request "
                   f"attempt; derived: max({GENRM_MIN_TIMEOUT:g}, --genrm-max-tokens / {GENRM_TOKENS_PER_S:g} tokens/s)")
    g.add_argument("--genrm-wait", default=900.0, type=float, help="when every GenRM request of a step fails, ask "
                   "again with backoff for up to this many seconds (a server restart) before stopping; 0: stop at once")
    g.add_argument("--genrm-retries", default=2, type=int, help="retries per failed GenRM request (with backoff)")
    g.add_argument("--max-bad-steps", default=3, type=int, help="stop after this many consecutive non-finite steps")
    g.add_argument("--start-eval", default=True, action=argparse.BooleanOptionalAction,
                   help="evaluate before the first RL step")
    g.add_argument("--dump-every", default=0, type=int, help="RL steps between rollout dumps (OUT/dumps); evals always dump")
    g.add_argument("--dump-prompts", default=4, type=int, help="prompts per dump (rank 0's first ones), every rollout of each")
    g.add_argument("--export-every", default=0, type=int, help="steps between HF exports (PHASE/exports/step_N; PHASE/hf "
                                                               "is the newest); 0: only at the end of each phase")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    g.add_argument("--wandb", default="", help="W&B project: mirror metrics.jsonl there (optional: pip install wandb)")
    g.add_argument("--debug", action="store_true", help="full tracebacks on every rank")
    return ap


def given_flags(argv):
    """The flags actually on the command line (dest names): a parser whose every default is 'absent'."""
    ap = build_parser()
    for action in ap._actions:
        action.default = argparse.SUPPRESS
    return set(vars(ap.parse_args(argv)))


# ---- merge, derive, validate ----


def parse_config(argv=None):
    """Literal defaults < preset < explicit flags; then derived defaults; validated before anything runs."""
    cfg = build_parser().parse_args(argv)
    given = given_flags(argv)
    if cfg.preset == "auto":
        cfg.preset = ("toy-genrm" if cfg.task == "genrm" else "toy") if cfg.data == "toy" else "none"
    for k, v in PRESETS.get(cfg.preset, {}).items():
        if k not in given:
            setattr(cfg, k, v)
    if cfg.test_data == "auto":
        cfg.test_data = cfg.data if cfg.data in BUILTIN_TASKS else "none"
    cfg.out = cfg.out or os.path.join("out", cfg.task)
    cfg.derived = derive_defaults(cfg, given)
    validate(cfg)
    return cfg


def derive_defaults(cfg, given) -> dict:
    """Defaults (literal or preset) that conflict with a flag you gave are derived from it; returns what was
    changed and why, for the printed config. A value you gave yourself is never changed here."""
    derived = {}

    def derive(name, value, why):
        if name not in given and getattr(cfg, name) != value:
            derived[name] = f"{value} (default {getattr(cfg, name)}: {why})"
            setattr(cfg, name, value)
    if cfg.mini_batch_prompts and cfg.prompts_per_step > 0 and cfg.prompts_per_step % cfg.mini_batch_prompts:
        derive("mini_batch_prompts", math.gcd(cfg.prompts_per_step, cfg.mini_batch_prompts),
               f"must divide --prompts-per-step {cfg.prompts_per_step}")
    if cfg.overlong_buffer >= cfg.max_response_len > 0:
        # the official 7B ratio: a 4096-token buffer on 8192-token responses
        derive("overlong_buffer", cfg.max_response_len // 2, f"must be < --max-response-len {cfg.max_response_len}")
    repeats = parse_repeats(cfg.eval_repeats)
    fewest = min([cfg.eval_samples] + list(repeats.values()))
    if cfg.pass_k > fewest >= 1:
        derive("pass_k", fewest, f"needs that many samples per prompt (--eval-samples / --eval-repeats)")
    if cfg.genrm_timeout is None:  # not given: sized from the critique budget (said where a served GenRM uses it)
        cfg.genrm_timeout = float(math.ceil(max(GENRM_MIN_TIMEOUT, cfg.genrm_max_tokens / GENRM_TOKENS_PER_S)))
    if "genrm_timeout" not in given and cfg.genrm.startswith(("http://", "https://")):
        derived["genrm_timeout"] = (f"{cfg.genrm_timeout:g} (max({GENRM_MIN_TIMEOUT:g} s, --genrm-max-tokens "
                                    f"{cfg.genrm_max_tokens} / {GENRM_TOKENS_PER_S:g} tokens/s))")
    return derived


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
    need(cfg.genrm_wait >= 0 and math.isfinite(cfg.genrm_wait), "--genrm-wait must be >= 0 seconds")
    for name in ("lr", "sft_lr", "grad_clip", "genrm_timeout", "overlong_factor"):
        need(getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name)), f"--{name.replace('_', '-')} must be > 0")
    for name in ("top_p", "eval_top_p", "genrm_top_p"):
        value = getattr(cfg, name)  # None (genrm_top_p unset): the GenRM's own
        need(value is None or 0 < value <= 1, f"--{name.replace('_', '-')} must be in (0, 1]")
    need(cfg.temperature > 0, "--temperature must be > 0 for RL: the loss needs the sampling distribution")
    need(cfg.eval_temperature >= 0 and (cfg.genrm_temperature is None or cfg.genrm_temperature >= 0),
         "temperatures must be >= 0")
    need(cfg.genrm_top_k is None or cfg.genrm_top_k >= 0, "--genrm-top-k must be >= 0")
    need(0 <= cfg.fapo_lambda, f"--fapo-lambda must be >= 0, got {cfg.fapo_lambda}")
    need(cfg.rollouts >= 2 or cfg.task == "sft", "--rollouts must be >= 2: a GRPO group of one has zero advantage")
    need(0 <= cfg.sft_flawed_share <= 1 and 0 <= cfg.sft_slip_share <= 1, "--sft-*-share must be in [0, 1]")
    need(cfg.clip_c > 1, "--clip-c must be > 1")
    need(cfg.overlong_buffer < cfg.max_response_len,
         f"--overlong-buffer {cfg.overlong_buffer} must be < --max-response-len {cfg.max_response_len}, "
         "or every rollout is penalised")
    need(not cfg.mini_batch_prompts or cfg.prompts_per_step % cfg.mini_batch_prompts == 0,
         f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of --mini-batch-prompts {cfg.mini_batch_prompts}")
    repeats = parse_repeats(cfg.eval_repeats)
    need(cfg.pass_k <= min([cfg.eval_samples] + list(repeats.values())),
         f"--pass-k {cfg.pass_k} needs at least that many samples per prompt (--eval-samples / --eval-repeats)")
    need(cfg.genrm != "oracle" or cfg.data in BUILTIN_TASKS or cfg.task != "rl",
         "--genrm oracle is the toy task's exact checker and judges nothing on real data: give --genrm DIR, "
         "--genrm http://HOST:PORT/v1, or --genrm none (the baseline)")
    need(cfg.test_data.split("-")[0] not in BUILTIN_TASKS or cfg.test_data.split("-")[0] == cfg.data,
         f"--test-data {cfg.test_data} is a split of that task: it needs --data {cfg.test_data.split('-')[0]}")
    need(cfg.data != "arith" or cfg.task != "genrm", "--data arith has no critique rows: --task rl or sft")
    for name in ("model", "data", "test_data", "genrm"):
        path = getattr(cfg, name)
        if path not in BUILTIN_TASKS + ("arith-val", "none", "oracle") and not path.startswith(("http://", "https://")):
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


# ---- budgets and settings, once the model is known ----


def check_budgets(cfg, context, judge=None):
    """Every length budget against the context it must fit: a clear error, never a silent cut or skip."""
    if cfg.max_prompt_len + cfg.max_response_len > context:
        raise SystemExit(f"config error: --max-prompt-len {cfg.max_prompt_len} + --max-response-len "
                         f"{cfg.max_response_len} > the model's context {context} (raise it with --context-len)")
    if judge is not None and judge.context_len:  # the critique prompt holds the problem and the whole response
        need = cfg.max_prompt_len + cfg.max_response_len + judge.template_tokens + cfg.genrm_max_tokens
        if need > judge.context_len:
            raise SystemExit(f"config error: the GenRM needs ~{need} tokens (prompt {cfg.max_prompt_len} + response "
                             f"{cfg.max_response_len} + template {judge.template_tokens} + --genrm-max-tokens "
                             f"{cfg.genrm_max_tokens}) > its context {judge.context_len} (--genrm-context-len, or "
                             "smaller budgets); a longer critique prompt at run time is counted as judge_failed")


def update_settings(cfg, pad_id, phase="rl"):
    """grpo.UpdateSettings from the config: the loss knows nothing of argparse."""
    n_updates = cfg.prompts_per_step // cfg.mini_batch_prompts if cfg.mini_batch_prompts else 1
    return grpo.UpdateSettings(
        pad_id=pad_id, temperature=cfg.temperature if phase == "rl" else 1.0, mini_batches=n_updates,
        micro_batch=cfg.micro_batch, micro_batch_tokens=cfg.micro_batch_tokens,
        logprob_batch_tokens=cfg.logprob_batch_tokens, loss_agg=cfg.loss_agg, clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, clip_c=cfg.clip_c, grad_clip=cfg.grad_clip, kl_coef=cfg.kl_coef,
        kl_kind=cfg.kl_kind, max_response_len=cfg.max_response_len, tis_cap=cfg.tis_cap if phase == "rl" else 0.0,
        skip_zero_advantage=bool(cfg.skip_zero_advantage), share_prompts=not cfg.grad_checkpointing)


# ---- resume: the settings a checkpoint restores ----

# the optimizer's and scheduler's: changing one on resume would be ignored
RESTORED = ("lr", "sft_lr", "warmup", "sft_warmup", "weight_decay", "betas", "seed", "model", "task", "preset")


def changed_on_resume(cfg, path) -> str:
    """The RESTORED settings that differ from the run's config.json at `path` ('' when none, or no file)."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        old = json.load(f)
    changed = [k for k in RESTORED if k in old and json.loads(json.dumps(getattr(cfg, k))) != old[k]]
    return ", ".join(f"--{k.replace('_', '-')} ({old[k]} -> {getattr(cfg, k)})" for k in changed)
