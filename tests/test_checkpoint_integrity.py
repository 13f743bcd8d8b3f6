"""Tests for the checkpoint's integrity (infra/checkpoint.py): the COMPLETE marker's sizes and CRC-32s catch a
truncated, flipped, grown or missing file (the marker itself included); --resume then falls back to the
complete state before it, and refuses, in one line, when none is whole.

Run as a script under torchrun, this file is also the worker of the 2-process fallback test."""
import json
import os
import pathlib
import random
import shutil
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from infra import checkpoint, fsdp  # noqa: E402
import train  # noqa: E402
from test_fsdp import FAST, assert_same, hf_tensors, load_fresh, snapshot, step, tiny_setup  # noqa: E402
from test_train import TINY  # noqa: E402


def two_states(out):
    """Saves at steps 1 and 2; the snapshots of both."""
    world, model, opt, sched = tiny_setup()
    ck = checkpoint.Checkpointer(out, world)
    snaps = []
    for s in (1, 2):
        step(model, opt, sched, s)
        ck.save(model, opt, sched, {"step": s})
        snaps.append(snapshot(model, opt))
    return (world, model, opt, sched), snaps


def state_dir(out, s):
    return os.path.join(out, "ckpt", f"step_{s:06d}")


def flip(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))  # one bit: the smallest damage there is


def truncate(path, by=1):
    os.truncate(path, os.path.getsize(path) - by)


def grow(path):
    with open(path, "ab") as f:
        f.write(b"\0")


def shard(path):
    return os.path.join(path, "__0_0.distcp")


# (damage, the file it hits, what the one line says)
DAMAGE = {
    "truncated shard": (lambda d: truncate(shard(d), 100), "__0_0.distcp", "truncated: size"),
    "flipped shard": (lambda d: flip(shard(d), os.path.getsize(shard(d)) // 2), "__0_0.distcp", "checksum mismatch"),
    "grown shard": (lambda d: grow(shard(d)), "__0_0.distcp", "grown: size"),
    "deleted shard": (lambda d: os.remove(shard(d)), "__0_0.distcp", "missing file"),
    "flipped trainer.pt": (lambda d: flip(os.path.join(d, "trainer.pt"), 200), "trainer.pt", "checksum mismatch"),
    "deleted trainer.pt": (lambda d: os.remove(os.path.join(d, "trainer.pt")), "trainer.pt", "missing file"),
    "flipped .metadata": (lambda d: flip(os.path.join(d, ".metadata"), 10), ".metadata", "checksum mismatch"),
    "flipped marker": (lambda d: flip(os.path.join(d, "COMPLETE"), 30), "COMPLETE", "checksum mismatch"),
    "truncated marker": (lambda d: truncate(os.path.join(d, "COMPLETE"), 5), "COMPLETE", "unreadable"),
    "deleted marker": (lambda d: os.remove(os.path.join(d, "COMPLETE")), "COMPLETE", "missing file"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_newest_state_falls_back_to_the_one_before(tmp_path, capsys, kind):
    """--resume names the damaged file and what is wrong (one line), loads step 1 bit for bit, and sets step 2
    aside; a second resume loads step 1 silently."""
    out = str(tmp_path / "run")
    _, (before, _) = two_states(out)
    damage, name, what = DAMAGE[kind]
    damage(state_dir(out, 2))
    capsys.readouterr()
    state, snap, _ = load_fresh(out)
    assert state["step"] == 1
    assert_same(snap, before)
    said = [line for line in capsys.readouterr().out.splitlines() if " is damaged (" in line]
    assert len(said) == 1 and f"step_000002 is damaged ({name}: {what}" in said[0], said
    assert "set aside as step_000002.damaged, resuming from step_000001" in said[0]
    assert sorted(os.listdir(os.path.join(out, "ckpt"))) == ["latest", "step_000001", "step_000002.damaged"]
    assert open(os.path.join(out, "ckpt", "latest")).read() == "step_000001"
    assert load_fresh(out)[0]["step"] == 1 and " is damaged (" not in capsys.readouterr().out


def test_every_damage_to_every_file_is_detected(tmp_path):
    """Each file of a state (shards, .metadata, trainer.pt, the marker): truncated, grown, deleted, and one bit
    flipped at 16 places (its first and last byte among them): detected N of N, and the whole state passes."""
    out = str(tmp_path / "run")
    (world, *_), _ = two_states(out)
    ck, path = checkpoint.Checkpointer(out, world), state_dir(out, 2)
    assert ck._verify(path) is None
    rng, tried, missed = random.Random(0), 0, []
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        size = os.path.getsize(p)
        damages = [truncate, grow, os.remove] + [lambda q, at=at: flip(q, at)
                                                 for at in [0, size - 1] + rng.sample(range(1, size - 1), 14)]
        for damage in damages:
            shutil.copy(p, p + ".orig")
            damage(p)
            tried += 1
            problem = ck._verify(path)
            if problem is None or not problem.startswith(name + ":"):
                missed.append((name, damage, problem))
            os.replace(p + ".orig", p)
    assert ck._verify(path) is None
    assert not missed and tried == 19 * len(os.listdir(path)), missed
    print(f"detected {tried} of {tried}")


def test_refuses_in_one_line_when_no_state_is_whole(tmp_path):
    out = str(tmp_path / "run")
    two_states(out)
    flip(shard(state_dir(out, 2)), 40)
    truncate(os.path.join(state_dir(out, 1), "trainer.pt"))
    listing = sorted(os.listdir(os.path.join(out, "ckpt")))
    with pytest.raises(checkpoint.CheckpointError) as e:
        load_fresh(out)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(os.path.join(out, "ckpt") + " holds no whole checkpoint to resume")
    assert "step_000002: __0_0.distcp: checksum mismatch; step_000001: trainer.pt: truncated: size" in msg
    assert sorted(os.listdir(os.path.join(out, "ckpt"))) == listing  # nothing moved: all is there to inspect


def test_a_run_continues_and_saves_after_a_fallback(tmp_path):
    """After the fallback the run redoes step 2, and its save gets the name the damaged state had."""
    out = str(tmp_path / "run")
    _, (before, _) = two_states(out)
    flip(shard(state_dir(out, 2)), 7)
    world, model, opt, sched = tiny_setup(seed=99)
    ck = checkpoint.Checkpointer(out, world)
    assert ck.load(model, opt, sched)["step"] == 1
    assert_same(snapshot(model, opt), before)
    for s in (2, 3):
        step(model, opt, sched, s)
        ck.save(model, opt, sched, {"step": s})
        state, snap, _ = load_fresh(out)
        assert state["step"] == s
        assert_same(snap, snapshot(model, opt))
    assert sorted(os.listdir(os.path.join(out, "ckpt"))) == [
        "latest", "step_000002", "step_000002.damaged", "step_000003"]  # evidence stays until a person removes it


def test_a_kill_inside_the_fallback(tmp_path):
    """Killed after the pointer moved back, before the damaged state was set aside: the next resume loads the
    pointer's state, and the next save replaces the damaged directory of its own step."""
    out = str(tmp_path / "run")
    (world, model, opt, sched), (before, _) = two_states(out)
    flip(shard(state_dir(out, 2)), 7)
    checkpoint.write_atomic(os.path.join(out, "ckpt", "latest"), "step_000001")  # what _set_aside does first
    state, snap, _ = load_fresh(out)
    assert state["step"] == 1
    assert_same(snap, before)
    checkpoint.Checkpointer(out, world).save(model, opt, sched, {"step": 2})
    assert sorted(os.listdir(os.path.join(out, "ckpt"))) == ["latest", "step_000001", "step_000002"]
    assert load_fresh(out)[0]["step"] == 2


def test_the_pointer_naming_an_incomplete_state(tmp_path):
    """latest() keeps its error; --resume falls back past it, or refuses naming it when there is nothing before."""
    out = str(tmp_path / "run")
    (world, *_), (before, _) = two_states(out)
    os.remove(os.path.join(state_dir(out, 2), "COMPLETE"))
    with pytest.raises(checkpoint.CheckpointError, match="latest names step_000002, which is not a complete"):
        checkpoint.Checkpointer(out, world).latest()
    shutil.rmtree(state_dir(out, 1))
    with pytest.raises(checkpoint.CheckpointError, match=r"no whole checkpoint to resume \(latest names step_000002\)"
                                                         r": step_000002: COMPLETE: missing file"):
        load_fresh(out)
    checkpoint.write_atomic(os.path.join(out, "ckpt", "latest"), "step_000009")
    with pytest.raises(checkpoint.CheckpointError, match="step_000009: directory missing"):
        load_fresh(out)


def test_old_layouts_still_load_or_give_a_clear_error(tmp_path):
    out = str(tmp_path / "run")
    two_states(out)
    path = state_dir(out, 2)
    with open(os.path.join(path, "COMPLETE"), "w") as f:  # the marker before it had files: loads, unverified
        json.dump({"step": 2, "world_size": 1}, f)
    assert load_fresh(out)[0]["step"] == 2
    old = str(tmp_path / "old")
    os.makedirs(os.path.join(old, "ckpt"))
    open(os.path.join(old, "ckpt", "trainer_state.pt"), "w").close()
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint of the old layout"):
        load_fresh(old)


def test_a_resumed_run_recovers_from_a_damaged_last_checkpoint(tmp_path, capsys):
    """End to end: a finished run's last RL state is damaged; --resume falls back to step 2, redoes step 3 and
    saves it: the weights equal the first run's export of step 3, bit for bit."""
    out = str(tmp_path / "run")
    train.main(TINY + FAST + ["--out", out])
    rl = os.path.join(out, "rl")
    truncate(os.path.join(rl, "ckpt", "step_000003", "trainer.pt"), 9)
    capsys.readouterr()
    train.main(TINY + FAST + ["--out", out, "--resume"])  # in this process: what rank 0 prints is captured
    printed = capsys.readouterr().out
    assert "step_000003 is damaged (trainer.pt: truncated: size" in printed and "resumed from" in printed
    steps = [m["step"] for m in map(json.loads, open(os.path.join(rl, "metrics.jsonl"))) if "eval" not in m]
    assert steps == [1, 2, 3]
    assert sorted(os.listdir(os.path.join(rl, "ckpt"))) == ["latest", "step_000002", "step_000003",
                                                            "step_000003.damaged"]
    world, model, opt, sched = tiny_setup(seed=5)
    assert checkpoint.Checkpointer(rl, world).load(model, opt, sched)["step"] == 3
    exported, full = hf_tensors(os.path.join(rl, "exports", "step_000003")), fsdp.full_state_dict(model)
    assert exported.keys() <= full.keys() and all(torch.equal(v, full[k]) for k, v in exported.items())


@pytest.mark.xdist_group("two_ranks")
def test_two_processes_agree_on_a_fallback(two_ranks):
    """2 processes save; a bit of rank 0's shard flips, and rank 1 is the one that checks it: both ranks fall
    back to step 1 and load it (tests/two_ranks.py)."""
    tmp_path = pathlib.Path(two_ranks.result("fallback", ""))
    assert [open(tmp_path / f"rank{k}").read() for k in (0, 1)] == ["1 same"] * 2
    assert "step_000002 is damaged (__0_0.distcp: checksum mismatch)" in two_ranks.stdout
    marker = json.load(open(tmp_path / "run" / "ckpt" / "step_000001" / "COMPLETE"))
    assert marker["world_size"] == 2
    assert set(marker["files"]) == {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer.pt"}


def two_rank_job(tmp):
    """tests/two_ranks.py: both ranks save twice, rank 0 flips a bit of its step-2 shard, both load."""
    out = os.path.join(tmp, "run")
    (world, *_), (before, _) = two_states(out)
    if world.main:  # sorted names: .metadata, __0_0, __1_0, trainer.pt; rank 1 checks the 2nd and the 4th
        flip(shard(state_dir(out, 2)), 33)
    torch.distributed.barrier()
    state, snap, _ = load_fresh(out)
    try:
        assert_same(snap, before)
        same = "same"
    except AssertionError:
        same = "differs"
    with open(os.path.join(tmp, f"rank{world.rank}"), "w") as f:
        f.write(f"{state['step']} {same}")
