"""Every common decoder family loads on the meta device, decodes, and trains: tiny random models of Llama,
Qwen2, Qwen3, Gemma-3 (sliding-window layers, a scaled embedding whose constructor takes no config), Mistral
and Phi-3, saved as HF directories with the toy tokenizer. Loading (infra/fsdp.load_pretrained) must equal
from_pretrained, buffers included; the sampler's greedy tokens must equal model.generate's; one RL step runs
through train.py on 1 process and on 2 (torchrun)."""
import json
import math
import os

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from conftest import ROOT
import sampler
import toy
import train
from infra import fsdp

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, tie_word_embeddings=False)
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 8, "layer_types": ["sliding_attention",
                                                                                          "full_attention"]}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "phi3": ("Phi3Config", {"pad_token_id": 0}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_loads_on_meta_and_decodes_like_generate(family, family_dirs):
    path = family_dirs[family]
    want = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model = fsdp.load_pretrained(path, fsdp.World(), torch.float32).eval()
    got = fsdp.full_state_dict(model)
    assert all(torch.equal(got[k], want.state_dict()[k]) for k in want.state_dict())
    for (n, b), (m, c) in zip(model.named_buffers(), want.named_buffers(), strict=True):
        assert n == m and torch.equal(b, c), n  # non-persistent buffers too (rotary, Gemma's embed_scale)
    prompts = [[5, 9, 13, 17, 21], [7, 11, 3]]
    with fsdp.gathered(model), torch.no_grad():
        ids = torch.tensor([prompts[0]])
        assert torch.allclose(model(ids).logits, want(ids).logits, atol=1e-5)
        ours = [c.tokens for c in sampler.generate(model, prompts, 12, temperature=0, fast=False)]
    for p, toks in zip(prompts, ours):
        ref = want.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(p):].tolist()
        assert toks == ref, family


def rl_args(path, out):
    return ["--model", path, "--data", os.path.join(path, "rows.jsonl"), "--test-data", "none", "--genrm", "none",
            "--steps", "1", "--prompts-per-step", "2", "--rollouts", "2", "--max-prompt-len", "64",
            "--max-response-len", "8", "--overlong-buffer", "0", "--mini-batch-prompts", "0", "--micro-batch-tokens",
            "0", "--logprob-batch-tokens", "0", "--no-progress", "--out", out, "--lr", "1e-3",
            "--skip-zero-advantage", "0"]  # every rollout through the update: the family's backward is what is tested


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_one_rl_step(family, family_dirs, tmp_path, capsys):
    train.main(rl_args(family_dirs[family], str(tmp_path / family)))
    assert "nothing evaluated (no test data); the last step (1):" in capsys.readouterr().out  # still a summary
    step = json.loads(open(tmp_path / family / "rl" / "metrics.jsonl").readline())
    # a random model earns -1 everywhere: zero advantages, so the gradient is 0; the step's forward and backward
    # through the sharded model ran (entropy of the sampled responses > 0, finite loss and norm)
    assert step["step"] == 1 and step["entropy"] > 0 and math.isfinite(step["loss"]) and step["grad_norm"] >= 0


@pytest.mark.xdist_group("two_ranks")
def test_every_family_trains_on_two_processes(two_ranks):
    """One RL step of every family on 2 ranks (tests/two_ranks.py: one torchrun launch for all of them)."""
    out = two_ranks.result("families", "")
    for family in FAMILIES:
        step = json.loads(open(os.path.join(out, family, "rl", "metrics.jsonl")).readline())
        assert step["step"] == 1 and step["entropy"] > 0 and math.isfinite(step["loss"]), family


def two_rank_job(out, dirs):
    """tests/two_ranks.py: one RL step of every family through train.train, on 2 ranks."""
    import config
    for name, path in dirs.items():
        train.train(config.parse_config(rl_args(path, os.path.join(out, name))))
