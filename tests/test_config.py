"""config.py: presets equal the official scripts, bad flags are refused before anything runs, defaults that
conflict with a flag you gave are derived from it (and say so), explicit conflicts are refused."""
import json
import os
import re

import pytest

import config

# ---- presets, validation (issues 9, 10, 14) ----

# The official run scripts (recipe/fapo/run_*.sh), written out by hand: every preset must equal them.
OFFICIAL = {
    "fapo-7b": dict(prompts_per_step=512, mini_batch_prompts=32, rollouts=8, max_prompt_len=2048, max_response_len=8192,
                    overlong_buffer=4096, overlong_factor=1.0, lr=1e-6, warmup=10, weight_decay=0.1, grad_clip=1.0,
                    clip_low=0.2, clip_high=0.28, clip_c=10.0, loss_agg="token-mean", temperature=1.0, top_p=1.0,
                    eval_temperature=1.0, eval_top_p=0.7, eval_samples=1, steps=200, eval_every=10, context_len=32768,
                    micro_batch_tokens=20480, logprob_batch_tokens=30720, grad_checkpointing=True, offload=True,
                    genrm_max_tokens=16384, fapo_lambda=1.0, kl_coef=0.0),
    "fapo-32b": dict(prompts_per_step=512, mini_batch_prompts=32, rollouts=8, max_prompt_len=2048, max_response_len=20480,
                     overlong_buffer=4096, lr=1e-6, warmup=10, weight_decay=0.1, clip_low=0.2, clip_high=0.28,
                     temperature=1.0, eval_temperature=1.0, eval_top_p=0.7, steps=600, eval_every=10, context_len=0,
                     micro_batch_tokens=22528, logprob_batch_tokens=22528, genrm_max_tokens=16384),
    "baseline-32b": dict(prompts_per_step=512, mini_batch_prompts=32, rollouts=8, max_prompt_len=2048,
                         max_response_len=20480, overlong_buffer=4096, overlong_factor=1.0, lr=1e-6, warmup=10,
                         weight_decay=0.1, grad_clip=1.0, clip_low=0.2, clip_high=0.28, clip_c=10.0, loss_agg="token-mean",
                         temperature=1.0, top_p=1.0, eval_temperature=1.0, eval_top_p=0.7, eval_samples=1, steps=600,
                         eval_every=10, context_len=0, micro_batch_tokens=22528, logprob_batch_tokens=22528,
                         grad_checkpointing=True, offload=True, genrm="none", fapo_lambda=0.0, kl_coef=0.0),
    "baseline-7b": dict(prompts_per_step=512, mini_batch_prompts=32, rollouts=8, max_response_len=8192, overlong_buffer=4096,
                        lr=1e-6, steps=200, context_len=32768, genrm="none", fapo_lambda=0.0, eval_top_p=0.7),
    "genrm-4b": dict(task="genrm", prompts_per_step=512, mini_batch_prompts=32, rollouts=16, max_prompt_len=5120,
                     max_response_len=8192, overlong_buffer=4096, overlong_factor=1.0, lr=1e-6, warmup=10,
                     weight_decay=0.1, temperature=1.2, eval_temperature=0.6, eval_top_p=0.95, steps=500, eval_every=10,
                     save_every=10, micro_batch_tokens=26624, logprob_batch_tokens=39936, context_len=32768),
}


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_presets_equal_the_official_scripts(preset, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "1+1", "reward_model": {"ground_truth": "2"}}) + "\n")
    cfg = config.parse_config(["--preset", preset, "--data", str(rows), "--genrm", "none"])
    for k, v in OFFICIAL[preset].items():
        if k == "genrm":
            continue
        assert getattr(cfg, k) == v, (preset, k, getattr(cfg, k), v)
    # an explicit flag wins over the preset; the mini-batch is counted in prompts, so it scales
    cfg = config.parse_config(["--preset", preset, "--data", str(rows), "--genrm", "none", "--lr", "3e-6",
                              "--prompts-per-step", "64"])
    assert cfg.lr == 3e-6 and config.update_settings(cfg, 0).mini_batches == 64 // 32


def test_help_shows_real_defaults():
    text = config.build_parser().format_help()
    assert "default: None" not in text and "(default: 8192)" in text


@pytest.mark.parametrize("flags, words", [
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--eval-samples", "1", "--pass-k", "2"], "--pass-k 2"),
    (["--rollouts", "1"], "--rollouts must be >= 2"),
    (["--rollouts", "0"], "--rollouts must be >= 1"),
    (["--micro-batch", "0"], "--micro-batch must be >= 1"),
    (["--save-every", "-1"], "--save-every must be >= 0"),
    (["--fapo-lambda", "-5"], "--fapo-lambda must be >= 0"),
    (["--max-response-len", "0"], "--max-response-len must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--max-response-len", "40", "--overlong-buffer", "40"], "--overlong-buffer 40 must be <"),
    (["--model", "no/such/dir"], "no such file or directory"),
    (["--genrm", "Qwen/not-here"], "nothing is downloaded"),
    (["--eval-repeats", "aime=x"], "--eval-repeats"),
])
def test_bad_flags_are_refused_before_anything_runs(flags, words, tmp_path):
    with pytest.raises(SystemExit, match=re.escape(words)):
        config.parse_config(flags + ["--out", str(tmp_path / "o")])
    assert not os.path.exists(tmp_path / "o")


def test_oracle_is_refused_on_real_data(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "1+1", "reward_model": {"ground_truth": "2"}}) + "\n")
    with pytest.raises(SystemExit, match="--genrm oracle"):
        config.parse_config(["--data", str(rows)])
    cfg = config.parse_config(["--data", str(rows), "--genrm", "none"])
    assert cfg.test_data == "none" and cfg.preset == "none"  # never the toy task's eval on real data


def test_defaults_adapt_to_the_flags_you_gave(tmp_path):
    """A small real run: --prompts-per-step 4 and --max-response-len 200 with the literal defaults (mini-batch 32,
    overlong buffer 4096) is not refused: the defaults are derived from the given flags, and the config says so."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "1+1", "reward_model": {"ground_truth": "2"}}) + "\n")
    cfg = config.parse_config(["--data", str(rows), "--genrm", "none", "--prompts-per-step", "4",
                               "--max-response-len", "200", "--eval-samples", "1"])
    assert cfg.mini_batch_prompts == 4 and cfg.overlong_buffer == 100 and cfg.pass_k == 1
    assert set(cfg.derived) == {"mini_batch_prompts", "overlong_buffer", "pass_k"}
    assert "must divide --prompts-per-step 4" in cfg.derived["mini_batch_prompts"]
    cfg = config.parse_config(["--data", str(rows), "--genrm", "none", "--prompts-per-step", "48"])
    assert cfg.mini_batch_prompts == 16  # the largest divisor of 48 that divides the default 32
    # a conflict between flags you gave is refused, never resolved for you
    with pytest.raises(SystemExit, match="--overlong-buffer 300 must be <"):
        config.parse_config(["--data", str(rows), "--genrm", "none", "--max-response-len", "200",
                             "--overlong-buffer", "300"])
    with pytest.raises(SystemExit, match="multiple of --mini-batch-prompts 3"):
        config.parse_config(["--data", str(rows), "--genrm", "none", "--prompts-per-step", "4",
                             "--mini-batch-prompts", "3"])


def test_help_shows_the_groups():
    text = config.build_parser().format_help()
    for group in ("run:", "rollouts:", "reward: the rule verifier", "update: advantages", "optimiser:",
                  "SFT (the cold start", "toy task (--data toy):", "evaluation and checkpoints:", "advanced: memory"):
        assert group in text, group
