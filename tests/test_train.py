"""Tests for train.py: the update's exact global token-mean (micro-batches, 2 processes vs 1), an
end-to-end toy run with checkpoint reload and resume, and bad input.

Run as a script under torchrun, this file is also the worker of the 2-process test."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import fsdp  # noqa: E402
import grpo  # noqa: E402
import toy  # noqa: E402
import train  # noqa: E402


def fixed_samples(tok, n=8, seed=0):
    """A fixed global batch: toy prompts, random responses of very different lengths, advantages."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = data.encode_prompt(tok, toy.problem_row(toy.make_problem(rng)).prompt)
        response = [rng.randrange(4, len(tok)) for _ in range(rng.choice([1, 3, 9, 20]))]
        out.append(grpo.Sample(prompt, response, rng.uniform(-2, 2)))
    return out


def update_cfg(tok, **kw):
    base = dict(pad_id=tok.pad_token_id, temperature=0.9, mini_batches=1, micro_batch=2, micro_batch_tokens=0,
                loss_agg="token-mean", clip_low=0.2, clip_high=0.28, clip_c=10.0, grad_clip=1e9, kl_coef=0.0,
                kl_kind="k3", max_response_len=48)
    base.update(kw)
    return grpo.UpdateSettings(**base)


def sgd_update(samples, world_rank=(1, 0), **kw):
    """One policy_update with SGD(lr=1): the parameter change is exactly minus the gradient."""
    d = fsdp.World()
    tok = toy.tokenizer()
    model = fsdp.shard(toy.build_model(tok, seed=3), d, torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    mine = samples[d.rank::d.size]
    stats = grpo.policy_update(model, opt, mine, update_cfg(tok, **kw), d)
    return fsdp.full_state_dict(model), stats, d


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_micro_batch_count_does_not_change_the_update(agg):
    tok = toy.tokenizer()
    samples = fixed_samples(tok)
    sd1, st1, _ = sgd_update(samples, micro_batch=1, loss_agg=agg)
    sd8, st8, _ = sgd_update(samples, micro_batch=8, loss_agg=agg)
    sd3, _, _ = sgd_update(samples, micro_batch=3, loss_agg=agg)
    init = toy.build_model(tok, seed=3).state_dict()
    moved = max((sd8[k] - init[k]).abs().max().item() for k in sd8)
    assert moved > 1e-3  # the update is not vacuous
    for k in sd1:
        torch.testing.assert_close(sd1[k], sd8[k], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(sd3[k], sd8[k], atol=1e-6, rtol=1e-5)
    assert st1["loss"] == pytest.approx(st8["loss"], abs=1e-6)


def test_mini_batches_recompute_old_logprobs():
    tok = toy.tokenizer()
    samples = fixed_samples(tok)
    sd, st, _ = sgd_update(samples, mini_batches=2, micro_batch=3)
    # two SGD updates of lr 1 on a tiny model: the second sees a moved policy, so ratios leave 1
    assert st["ppo_kl"] != 0.0 and all(torch.isfinite(v).all() for v in sd.values())


def run_worker(nproc, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port",
           str(29500 + random.randrange(1000)), os.path.abspath(__file__), out]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_two_processes_equal_one(tmp_path):
    one = run_worker(1, str(tmp_path / "one.pt"))
    two = run_worker(2, str(tmp_path / "two.pt"))
    assert abs(one["loss"] - two["loss"]) < 1e-5
    for k in one["params"]:
        torch.testing.assert_close(one["params"][k], two["params"][k], atol=1e-5, rtol=1e-5)


def _worker(out):
    torch.set_num_threads(1)
    tok = toy.tokenizer()
    sd, st, d = sgd_update(fixed_samples(tok), micro_batch=2)
    if d.main:
        torch.save({"params": sd, "loss": st["loss"]}, out)
    torch.distributed.barrier()  # nobody tears the group down while a peer still talks to it
    torch.distributed.destroy_process_group()


# ---- end to end ----

TINY = ["--sft-steps", "6", "--sft-batch", "16", "--steps", "3", "--prompts-per-step", "4", "--rollouts", "4",
        "--eval-prompts", "8", "--eval-samples", "2", "--eval-every", "2", "--save-every", "2", "--no-progress",
        "--max-response-len", "24", "--lr", "1e-2", "--sft-lr", "1e-2", "--warmup", "1", "--sft-warmup", "1"]


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_end_to_end_demo_checkpoint_and_resume(tmp_path):
    out = str(tmp_path / "run")
    train.main(TINY + ["--out", out])
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["fapo_lambda"] == 1.0 and cfg["task"] == "rl" and cfg["lr"] == 1e-2
    rl = read_jsonl(os.path.join(out, "rl", "metrics.jsonl"))
    steps = [m for m in rl if "eval" not in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for key in ("reward", "acc", "flawed_ratio", "response_length", "clipfrac", "entropy", "grad_norm", "lr",
                "t_sample", "t_judge", "t_train"):
        assert key in steps[0], key
    assert any(m.get("eval") == "step2" for m in rl)
    from transformers import AutoModelForCausalLM
    init = toy.build_model(toy.tokenizer(), seed=0)
    loaded = AutoModelForCausalLM.from_pretrained(os.path.join(out, "rl", "hf"))  # the phase's HF export
    assert any(not torch.equal(a, b) for a, b in zip(init.state_dict().values(), loaded.state_dict().values()))
    assert os.path.realpath(os.path.join(out, "rl", "hf")).endswith("step_000003")
    assert open(os.path.join(out, "rl", "ckpt", "latest")).read() == "step_000003"
    # resume: 2 more steps continue from step 3, with the checkpoint's weights
    train.main(TINY + ["--out", out, "--resume", "--steps", "5", "--sft-steps", "6"])
    rl = read_jsonl(os.path.join(out, "rl", "metrics.jsonl"))
    assert [m["step"] for m in rl if "eval" not in m] == [1, 2, 3, 4, 5]
    sft = [m for m in read_jsonl(os.path.join(out, "sft", "metrics.jsonl")) if "eval" not in m]
    assert [m["step"] for m in sft] == [1, 2, 3, 4, 5, 6]  # the finished SFT phase was not rerun


def test_missing_ground_truth_fails_fast(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"prompt": [{"role": "user", "content": "1+2"}], "reward_model": {"ground_truth": "3"}}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "1+1", "reward_model": {}}) + "\n")
    with pytest.raises(ValueError, match=r"row 2: field 'reward_model.ground_truth'"):
        train.main(["--task", "rl", "--data", str(bad), "--genrm", "none", "--out", str(tmp_path / "o"), "--no-progress"])
    torch.distributed.destroy_process_group()


def test_garbage_genrm_is_counted_not_fatal():
    """An untrained GenRM writes garbage: its verdicts are unparseable, counted, and not flags."""
    import fapo
    import genrm
    tok = toy.tokenizer()
    judge = genrm.ModelJudge(toy.build_model(tok, seed=1).eval(), tok, max_new_tokens=12, temperature=1.0)
    s = fapo.score_rollouts(["8+6=14\n\n\\boxed{14}"] * 4 + ["\\boxed{1}"], ["14"] * 5, ["8+6"] * 5, genrm=judge)
    assert s.counts["judged"] == 4 and s.counts["unparseable"] >= 3
    assert s.rewards[:4] == [0.0 if f else 1.0 for f in s.flagged[:4]] and s.rewards[4] == -1.0


if __name__ == "__main__":
    _worker(sys.argv[1])


def test_torchrun_two_processes_end_to_end(tmp_path):
    """`torchrun --nproc_per_node=2 train.py` with DAPO dynamic sampling (ranks keep different numbers
    of groups) and 2 mini-batches: no deadlock, metrics written once."""
    out = str(tmp_path / "run2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(30500 + random.randrange(1000)), "train.py", "--out", out, "--dynamic-sampling", "--mini-batch-prompts", "2"] + TINY
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rl = [m for m in read_jsonl(os.path.join(out, "rl", "metrics.jsonl")) if "eval" not in m]
    assert [m["step"] for m in rl] == [1, 2, 3] and all("groups_dropped" in m for m in rl)


def test_genrm_task_end_to_end(tmp_path):
    out = str(tmp_path / "g")
    train.main(["--task", "genrm", "--out", out, "--sft-steps", "4", "--sft-batch", "8", "--steps", "2",
                "--prompts-per-step", "2", "--rollouts", "4", "--eval-prompts", "8", "--eval-every", "1",
                "--no-progress", "--max-response-len", "32"])
    rl = read_jsonl(os.path.join(out, "rl", "metrics.jsonl"))
    steps = [m for m in rl if "eval" not in m]
    for key in ("outcome", "process", "verdict_acc", "parse_fail", "loc_err", "response_length"):
        assert key in steps[0], key
    evals = [m for m in rl if "eval" in m]
    assert evals and "eval_pb_f1" in evals[-1] and "eval_fp_f1" in evals[-1]


def test_sft_rows_need_a_response(tmp_path):
    f = tmp_path / "sft.jsonl"
    f.write_text(json.dumps({"prompt": "1+2", "reward_model": {"ground_truth": "3"}, "extra_info": {}}) + "\n")
    with pytest.raises(ValueError, match=r"row 1: field 'extra_info.response'"):
        train.main(["--task", "sft", "--data", str(f), "--out", str(tmp_path / "o"), "--no-progress"])
    torch.distributed.destroy_process_group()


def test_gradient_checkpointing_keeps_the_sampler_cache(tmp_path):
    out = str(tmp_path / "gc")
    train.main(TINY + ["--out", out, "--grad-checkpointing", "--steps", "1", "--eval-every", "0"])
    rl = [m for m in read_jsonl(os.path.join(out, "rl", "metrics.jsonl")) if "eval" not in m]
    assert len(rl) == 1 and rl[0]["grad_norm"] >= 0.0


def test_kl_reference_and_overlong_penalty_run(tmp_path):
    out = str(tmp_path / "kl")
    train.main(TINY + ["--out", out, "--steps", "2", "--eval-every", "0", "--kl-coef", "0.05",
                       "--overlong-buffer", "8", "--loss-agg", "seq-mean-token-sum-norm"])
    rl = [m for m in read_jsonl(os.path.join(out, "rl", "metrics.jsonl")) if "eval" not in m]
    assert len(rl) == 2 and all("kl" in m for m in rl)
    assert rl[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the starting policy
    assert rl[1]["kl"] > 0.0                              # after one update the policy has moved
