"""Tests for infra/fsdp.py and infra/checkpoint.py: loading on the meta device, the sharded training state, the HF export, and what a
kill, a full disk or a NaN at any point of a save leaves behind.

Run as a script under torchrun, this file is also the worker of the 2-process test."""
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import config  # noqa: E402
from infra import build, checkpoint, fsdp  # noqa: E402
from infra import safetensors_io as hfio  # noqa: E402
import toy  # noqa: E402
import train  # noqa: E402
from test_train import TINY  # noqa: E402

FAST = ["--test-data", "none"]  # no evaluation: these tests are about the weights
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def save_random_qwen(path, tie=True, dtype=torch.bfloat16, seed=0):
    """A small random Qwen3 in HF format; an odd vocabulary, so 2 ranks get shards of different sizes."""
    cfg = Qwen3Config(vocab_size=1001, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(cfg).to(dtype).save_pretrained(path)
    toy.tokenizer().save_pretrained(path)
    return path


def tiny_setup(seed=0):
    """The toy policy, sharded, with AdamW and the trainer's scheduler."""
    world = fsdp.World()
    model = fsdp.shard(toy.build_model(toy.tokenizer(), seed), world, torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    return world, model, opt, sched


def step(model, opt, sched, seed):
    """One optimizer step on a deterministic loss (the weights and the Adam state move)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (2, 7), generator=g)
    model(ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    sched.step()


def snapshot(model, opt):
    """The full weights and every parameter's Adam state (this rank's shards), copied."""
    adam = [{k: hfio.local(v).clone() for k, v in opt.state[p].items()} for p in opt.param_groups[0]["params"]]
    return {k: v.clone() for k, v in fsdp.full_state_dict(model).items()}, adam


def kill_at(point):
    """A stand-in for checkpoint._fault that dies at `point` (KeyboardInterrupt: no `except Exception` catches it)."""
    def fault(p):
        if p == point:
            raise KeyboardInterrupt(f"killed at {p}")
    return fault


def assert_same(a, b):
    (wa, oa), (wb, ob) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(oa) == len(ob) and all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                                      for a, b in zip(oa, ob))


def load_fresh(out):
    world, model, opt, sched = tiny_setup(seed=99)  # different weights: the load must replace every one
    state = checkpoint.Checkpointer(out, world).load(model, opt, sched)
    return state, snapshot(model, opt), sched


def hf_tensors(path):
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# ---- loading ----


@pytest.mark.parametrize("tie", [True, False])
def test_load_pretrained_equals_from_pretrained(tmp_path, tie):
    path = save_random_qwen(str(tmp_path / "m"), tie=tie)
    want = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = fsdp.load_pretrained(path, fsdp.World(), torch.float32)
    got = fsdp.full_state_dict(model)
    assert got.keys() == want.state_dict().keys()
    assert all(torch.equal(got[k], want.state_dict()[k]) for k in got)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    # the rotary inv_freq is a non-persistent buffer: built on meta it would be garbage
    for (n, b), (m, c) in zip(model.named_buffers(), want.named_buffers(), strict=True):
        assert n == m and torch.equal(b, c), n
    assert model.generation_config.to_dict() == want.generation_config.to_dict()
    ids = torch.randint(0, 1001, (2, 9))
    with fsdp.gathered(model), torch.no_grad():
        assert torch.equal(model(ids).logits, want(ids).logits)


def test_toy_model_is_unchanged_and_frozen_copy_is_exact():
    """The demo's toy model is still built as before (seeded), and the KL reference copies it exactly."""
    cfg = config.parse_config(["--no-progress"])
    tok = toy.tokenizer()
    world = fsdp.World()
    model = build.load_model(cfg, world, torch.float32, tok)
    built = toy.build_model(tok, cfg.seed).state_dict()
    got = fsdp.full_state_dict(model)
    assert all(torch.equal(got[k], built[k]) for k in built)
    ref = fsdp.frozen_copy(model, world, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(fsdp.full_state_dict(ref).values(), got.values()))
    assert not any(p.requires_grad for p in ref.parameters())


# ---- the sharded training state ----


def test_save_load_roundtrip_and_layout(tmp_path):
    out = str(tmp_path / "run")
    world, model, opt, sched = tiny_setup()
    ck = checkpoint.Checkpointer(out, world)
    assert ck.load(model, opt, sched) is None  # nothing to resume
    for s in (1, 2, 3):
        step(model, opt, sched, s)
        ck.save(model, opt, sched, {"step": s})
    # the newest two complete states stay (the one before is --resume's fallback); the oldest went
    assert sorted(os.listdir(os.path.join(out, "ckpt"))) == ["latest", "step_000002", "step_000003"]
    marker = json.load(open(os.path.join(out, "ckpt", "step_000003", "COMPLETE")))
    assert sorted(marker["files"]) == sorted(set(os.listdir(os.path.join(out, "ckpt", "step_000003"))) - {"COMPLETE"})
    state, snap, sched2 = load_fresh(out)
    assert state == {"step": 3} and sched2.state_dict() == sched.state_dict()
    assert_same(snap, snapshot(model, opt))


@pytest.mark.parametrize("point", checkpoint.SAVE_POINTS)
def test_a_fault_at_any_point_of_a_save(tmp_path, monkeypatch, point):
    """A kill at each step of a save: the previous state (or the new one, once the pointer moved) loads
    bit for bit, and the next save works and leaves nothing behind."""
    out = str(tmp_path / "run")
    world, model, opt, sched = tiny_setup()
    ck = checkpoint.Checkpointer(out, world)
    step(model, opt, sched, 1)
    ck.save(model, opt, sched, {"step": 1})
    before = snapshot(model, opt)
    step(model, opt, sched, 2)
    after = snapshot(model, opt)
    monkeypatch.setattr(checkpoint, "_fault", kill_at(point))
    with pytest.raises(KeyboardInterrupt):
        ck.save(model, opt, sched, {"step": 2})
    monkeypatch.undo()
    moved = checkpoint.SAVE_POINTS.index(point) >= checkpoint.SAVE_POINTS.index("pointer")
    state, snap, _ = load_fresh(out)
    assert state["step"] == (2 if moved else 1)
    assert_same(snap, after if moved else before)
    step(model, opt, sched, 3)
    checkpoint.Checkpointer(out, world).save(model, opt, sched, {"step": 3})
    kept = "step_000002" if moved else "step_000001"  # the killed save's leftovers went; the fallback stays
    assert sorted(os.listdir(os.path.join(out, "ckpt"))) == ["latest", kept, "step_000003"]
    state, snap, _ = load_fresh(out)
    assert state["step"] == 3
    assert_same(snap, snapshot(model, opt))


@pytest.mark.parametrize("point", checkpoint.EXPORT_POINTS)
def test_a_fault_at_any_point_of_an_export(tmp_path, monkeypatch, point):
    out = str(tmp_path / "run")
    world, model, _, _ = tiny_setup()
    ck, tok = checkpoint.Checkpointer(out, world), toy.tokenizer()
    ck.export(model, tok, 1)
    monkeypatch.setattr(checkpoint, "_fault", kill_at(point))
    with torch.no_grad():
        next(model.parameters()).to_local().add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ck.export(model, tok, 2)
    monkeypatch.undo()
    hf = os.path.join(out, "hf")
    assert os.path.realpath(hf).endswith("step_000002" if point == "export_linked" else "step_000001")
    AutoModelForCausalLM.from_pretrained(hf)  # whatever it points at is complete
    ck.export(model, tok, 2)
    assert os.path.realpath(hf).endswith("step_000002") and sorted(os.listdir(os.path.join(out, "exports"))) == [
        "step_000001", "step_000002"]
    full = fsdp.full_state_dict(model)
    assert all(torch.equal(v, full[k]) for k, v in hf_tensors(hf).items())


def test_a_failed_save_names_the_path_and_keeps_the_last_state(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    world, model, opt, sched = tiny_setup()
    ck = checkpoint.Checkpointer(out, world)
    ck.save(model, opt, sched, {"step": 1})
    good = snapshot(model, opt)
    step(model, opt, sched, 2)
    import torch.distributed.checkpoint.filesystem as dcp_files

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    for module, name in ((dcp_files, "_write_item"), (checkpoint, "_save_synced")):  # a rank's shards; rank 0's trainer.pt
        monkeypatch.setattr(module, name, full_disk)
        with pytest.raises(checkpoint.CheckpointError, match=r"step_000002 failed .*No space left.*step_000001 is intact"):
            ck.save(model, opt, sched, {"step": 2})
        monkeypatch.undo()
        state, snap, _ = load_fresh(out)
        assert state["step"] == 1
        assert_same(snap, good)
    ck.save(model, opt, sched, {"step": 2})  # the disk has room again
    assert load_fresh(out)[0]["step"] == 2


def test_nonfinite_weights_are_never_saved_or_exported(tmp_path):
    out = str(tmp_path / "run")
    world, model, opt, sched = tiny_setup()
    ck = checkpoint.Checkpointer(out, world)
    ck.save(model, opt, sched, {"step": 1})
    ck.export(model, toy.tokenizer(), 1)
    good = snapshot(model, opt)
    with torch.no_grad():
        list(model.parameters())[3].to_local()[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="step_000001 keeps the last good"):
        ck.save(model, opt, sched, {"step": 2})
    with pytest.raises(FloatingPointError):
        ck.export(model, toy.tokenizer(), 2)
    assert load_fresh(out)[0]["step"] == 1 and os.path.realpath(os.path.join(out, "hf")).endswith("step_000001")
    assert_same(load_fresh(out)[1], good)


def test_nan_run_stops_with_a_clear_error_and_keeps_a_finite_checkpoint(tmp_path):
    """--sft-lr 1e30: the weights blow up, gradients go non-finite, updates are skipped, then the run stops."""
    out = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match="consecutive steps with a non-finite loss or gradient"):
        train.main(TINY + FAST + ["--out", out, "--sft-steps", "5", "--sft-lr", "1e30", "--save-every", "1",
                                  "--max-bad-steps", "2"])
    world, model, opt, sched = tiny_setup()
    assert checkpoint.Checkpointer(os.path.join(out, "sft"), world).load(model, opt, sched)["step"] >= 1
    assert checkpoint.all_finite(model)


# ---- the HF export ----


def test_export_is_what_from_pretrained_loads_and_nothing_else(tmp_path):
    path = save_random_qwen(str(tmp_path / "m"), tie=True)
    world = fsdp.World()
    model = fsdp.load_pretrained(path, world, torch.float32)
    out = str(tmp_path / "run")
    checkpoint.Checkpointer(out, world).export(model, toy.tokenizer(), 7)
    hf = os.path.join(out, "hf")
    assert os.path.realpath(hf) == os.path.realpath(os.path.join(out, "exports", "step_000007"))
    files = sorted(os.listdir(hf))
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".pt", ".distcp", ".bin")) or "optim" in f or "trainer" in f]
    names = hf_tensors(hf)
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names  # the tied weight once
    assert json.load(open(os.path.join(hf, "config.json")))["architectures"] == ["Qwen3ForCausalLM"]
    loaded = AutoModelForCausalLM.from_pretrained(hf)
    want = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


# ---- end to end: kill, resume, bit-identical; 2 processes -> 1 ----

def final_weights(out):
    return hf_tensors(os.path.join(out, "rl", "hf"))


def test_killed_run_resumes_bit_identical(tmp_path):
    """The uninterrupted run vs one killed (os._exit) inside the last RL save, then resumed."""
    args = TINY + FAST
    train.main(args + ["--out", str(tmp_path / "a")])
    # SFT saves at steps 2, 4, 6 and exports once; RL saves at step 2; then die inside the step-3 save
    at = 3 * len(checkpoint.SAVE_POINTS) + len(checkpoint.EXPORT_POINTS) + len(checkpoint.SAVE_POINTS) + 3
    out = str(tmp_path / "b")
    r = subprocess.run([sys.executable, "train.py", "--out", out] + args, cwd=ROOT, capture_output=True, text=True,
                       env={**ENV, "FAPO_FAULT_AT": str(at)}, timeout=300)
    assert r.returncode == 137, r.stderr[-2000:]
    assert open(os.path.join(out, "rl", "ckpt", "latest")).read() == "step_000002"
    assert os.path.isdir(os.path.join(out, "rl", "ckpt", "step_000003"))  # the half-written save
    train.main(args + ["--out", out, "--resume"])
    a, b = final_weights(str(tmp_path / "a")), final_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [m["step"] for m in map(json.loads, open(os.path.join(out, "rl", "metrics.jsonl"))) if "eval" not in m]
    assert steps == [1, 2, 3]


@pytest.mark.xdist_group("two_ranks")
def test_two_process_checkpoint_resumes_in_one(two_ranks, tmp_path):
    """A 2-process run killed after its RL step-2 save resumes in 1 process: the loaded weights are the
    2-process run's (bit for bit, against its export of that step) and the run completes (tests/two_ranks.py's
    last job: the launch ends there, killed)."""
    killed = two_ranks.result("killed", "worker_ok", done=False)
    assert two_ranks.returncode != 0, "the 2-process run was not killed at its fault point"
    out = str(tmp_path / "two")
    shutil.copytree(os.path.join(os.path.dirname(killed), "two"), out, symlinks=True)
    assert open(os.path.join(out, "rl", "ckpt", "latest")).read() == "step_000002"
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    for phase, step_ in (("sft", 6), ("rl", 2)):  # SFT's Adam state is far from zero; RL's toy gradients may be 0
        world, model, opt, sched = tiny_setup(seed=5)
        ck = checkpoint.Checkpointer(os.path.join(out, phase), world)
        assert ck.load(model, opt, sched)["step"] == step_
        exported = hf_tensors(os.path.join(out, phase, "exports", f"step_{step_:06d}"))
        full = fsdp.full_state_dict(model)
        assert exported.keys() <= full.keys() and all(torch.equal(v, full[k]) for k, v in exported.items())
        dcp_to_torch_save(ck.latest(), str(tmp_path / "plain.pt"))  # read without resharding: what was written
        saved = torch.load(tmp_path / "plain.pt", weights_only=True)["optimizer"]["state"]
        loaded = get_optimizer_state_dict(model, opt)["state"]
        assert saved.keys() == loaded.keys() and all(torch.equal(hfio.local(loaded[k][n]), v)
                                                     for k in saved for n, v in saved[k].items())
        assert all(v["step"] == step_ for v in saved.values())
    train.main(TINY + FAST + ["--out", out, "--resume", "--export-every", "2"])
    steps = [m["step"] for m in map(json.loads, open(os.path.join(out, "rl", "metrics.jsonl"))) if "eval" not in m]
    assert steps == [1, 2, 3] and os.path.realpath(os.path.join(out, "rl", "hf")).endswith("step_000003")


def two_rank_job(tmp):
    """tests/two_ranks.py: load_pretrained with uneven shards on 2 ranks equals from_pretrained; then the TINY run,
    killed (FAPO_FAULT_AT) right after its RL step-2 save and export. With --export-every 2: SFT saves and exports
    at steps 2, 4, 6, re-links its final export (1 point), then RL saves and exports at step 2: die at that
    export's last point (fault points counted from this job on)."""
    save, export = len(checkpoint.SAVE_POINTS), len(checkpoint.EXPORT_POINTS)
    fault_at = str(3 * (save + export) + 1 + save + export)
    checkpoint._fault_count = 0
    world = fsdp.World()
    path = os.path.join(tmp, "m")
    if world.main:
        save_random_qwen(path, tie=True)
    torch.distributed.barrier()
    got = fsdp.full_state_dict(fsdp.load_pretrained(path, world, torch.float32))
    if world.main:
        want = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
        open(os.path.join(tmp, "worker_ok"), "w").close()
    os.environ["FAPO_FAULT_AT"] = fault_at
    train.main(TINY + FAST + ["--out", os.path.join(tmp, "two"), "--export-every", "2"])




# ---- judging memory ----

@pytest.mark.parametrize("flag, want", [([], 16384), (["--max-tokens-in-flight", "0"], None),
                                        (["--max-tokens-in-flight", "999"], 999)])
def test_genrm_cli_caps_tokens_in_flight(tmp_path, monkeypatch, flag, want):
    import genrm
    import sampler
    path = save_random_qwen(str(tmp_path / "m"))
    seen = []

    def spy(*a, **kw):
        seen.append(kw["max_tokens_in_flight"])
        return sampler.generate(*a, **kw)
    monkeypatch.setattr(genrm, "generate", spy)
    genrm.main(["--model", path, "--data", "toy", "--limit", "3", "--max-new-tokens", "4"] + flag)
    assert seen and all(s == want for s in seen)


# ---- GPU only ----

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU offload is FSDP2's, for CUDA runs")
def test_offload_keeps_shards_on_the_cpu(tmp_path):
    path = save_random_qwen(str(tmp_path / "m"))
    world = fsdp.World()
    model = fsdp.load_pretrained(path, world, torch.bfloat16, offload=True)
    assert all(p.to_local().device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cuda" for b in model.buffers())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 1001, (2, 9), device="cuda")
    model(ids, labels=ids).loss.backward()
    opt.step()
    assert all(s["exp_avg"].to_local().device.type == "cpu" for s in opt.state.values())
    with fsdp.gathered(model), torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
