"""infra/checkpoint.py -- checkpoints that survive a kill at any instant, HF exports, the output directory's lock.

    ckpt = Checkpointer(out_dir, world)     save / load the sharded training state; export HF weights
    lock = claim_output_dir(out, world)     one run per output directory; a previous run is never silently reused

On disk (OUT is a phase's output directory):
    OUT/ckpt/step_000120/    the training state for --resume: each rank's shards of weights and Adam state
                             (torch.distributed.checkpoint, any world size can load it), trainer.pt (scheduler,
                             step), COMPLETE (written last: every other file's size and CRC-32)
    OUT/ckpt/latest          the name of the newest complete state, replaced atomically; the complete state
                             before it is kept too, the fallback when --resume finds the newest one damaged
    OUT/ckpt/step_N.damaged  a state --resume found damaged, set aside for inspection (saves leave it be)
    OUT/exports/step_000120/ an HF export: config, model.safetensors (tied weights once), tokenizer; no trainer state
    OUT/hf                   a symlink to the newest export: what from_pretrained and vLLM load

Why apart (skip on first read): durability is plumbing (fsync, atomic renames, fault points for the kill
tests); the trainer only calls save / load / export.
"""
import fcntl
import json
import os
import re
import shutil
import zlib

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from infra import safetensors_io as hfio
from infra.fsdp import World, entries as _entries

# ---- checkpoints ----

SAVE_POINTS = ("cleaned", "shards", "trainer_state", "marker", "pointer", "pruned")  # _fault's points, in order
EXPORT_POINTS = ("export_started", "export_written", "export_renamed", "export_linked")
MARKER, DAMAGED = "COMPLETE", ".damaged"
_fault_count = 0


def _fault(point):
    """Fault injection: every step of a save calls this. FAPO_FAULT_AT=N kills the process (os._exit, like
    kill -9) at its N-th call; tests monkeypatch it to raise."""
    global _fault_count
    _fault_count += 1
    if os.environ.get("FAPO_FAULT_AT") == str(_fault_count):
        os._exit(137)


class CheckpointError(RuntimeError):
    pass


class Checkpointer:
    """OUT/ckpt (the sharded training state, versioned, behind the pointer OUT/ckpt/latest) and OUT/exports +
    OUT/hf (HF exports). Nothing is overwritten in place: a kill at any instant leaves the previous state
    loadable and the next save able to proceed (it removes what a killed save left)."""

    def __init__(self, out_dir, world: World):
        self.out_dir, self.world = out_dir, world
        self.dir, self.exports = os.path.join(out_dir, "ckpt"), os.path.join(out_dir, "exports")

    def save(self, model, optimizer, scheduler, state: dict):
        """The training state after state["step"]: every rank writes its shards, rank 0 the rest; then the
        pointer moves, then older states go."""
        name = f"step_{state['step']:06d}"
        path = os.path.join(self.dir, name)
        if not all_finite(model):  # a NaN must never replace the last good checkpoint
            raise FloatingPointError(f"non-finite weights at step {state['step']}: not saved; "
                                     f"{self.latest() or self.dir} keeps the last good checkpoint")
        if self._main(lambda: self._pointer() == name):
            return  # this very state is on disk (a resumed run saving the step it started from)
        try:
            self._main(lambda: self._prune(drop=name))  # what a killed save left, and any older state of this name
            _fault("cleaned")
            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=path)
            _fault("shards")
            # each rank sums the shards it wrote, from its page cache: no rank reads another node's files
            sums = _merged(self._everyone(lambda: _sums(path, _own_shards(path, self.world.rank))))
            self._main(lambda: self._commit(path, name, scheduler, state, sums))
        except (Exception, CheckpointException) as e:  # DCP's exception is a BaseException
            raise CheckpointError(f"checkpoint save to {path} failed ({_reason(e)}); "
                                  f"{self.latest() or 'no earlier checkpoint'} is intact") from e

    def _commit(self, path, name, scheduler, state, sums):
        _save_synced({"scheduler": scheduler.state_dict(), "state": state}, os.path.join(path, "trainer.pt"))
        _fault("trainer_state")
        rest = [f for f in sorted(os.listdir(path)) if f not in sums and f != MARKER]  # .metadata, trainer.pt, any
        files = {**sums, **_sums(path, rest)}  # shard no rank claimed (should DCP ever name its files otherwise)
        write_atomic(os.path.join(path, MARKER), _marker({"step": state["step"], "world_size": self.world.size,
                                                          "files": files}))
        _fsync_dir(path)
        _fault("marker")
        write_atomic(os.path.join(self.dir, "latest"), name)  # the one instant the checkpoint changes
        _fsync_dir(self.dir)
        _fault("pointer")
        self._prune()
        _fault("pruned")

    def _pointer(self):
        try:
            with open(os.path.join(self.dir, "latest")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def _complete(self):
        """The names of the states with a COMPLETE marker (not yet verified), oldest first."""
        names = [e for e in os.listdir(self.dir) if re.fullmatch(r"step_\d+", e)] if os.path.isdir(self.dir) else []
        return sorted((e for e in names if os.path.exists(os.path.join(self.dir, e, MARKER))), key=lambda e: int(e[5:]))

    def _older(self, name):
        """The complete states older than `name`, newest first: the fallbacks, should `name` be damaged."""
        return [e for e in reversed(self._complete()) if int(e[5:]) < int(name[5:])]

    def _prune(self, drop=None):
        """Keep the pointer's state and the complete one before it (but `drop`, the state about to be written);
        remove older ones, partial ones and newer ones (a killed save's, even one that wrote its marker: the
        pointer never reached it). Set-aside damaged states stay."""
        pointer = self._pointer()
        keep = ({pointer, *self._older(pointer)[:1]} if pointer else set()) - {drop} | {"latest"}
        for entry in os.listdir(self.dir) if os.path.isdir(self.dir) else []:
            if entry not in keep and not entry.endswith(DAMAGED):
                p = os.path.join(self.dir, entry)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)

    def latest(self):
        """The directory of the newest complete training state, or None."""
        name = self._named()
        if name is None:
            return None
        path = os.path.join(self.dir, name)
        if not os.path.exists(os.path.join(path, MARKER)):
            raise CheckpointError(f"{self.dir}/latest names {name}, which is not a complete checkpoint")
        return path

    def _named(self):
        """The pointer's state name, or None when there is none (and no checkpoint of the old layout)."""
        name = self._pointer()
        if name is None and os.path.exists(os.path.join(self.dir, "trainer_state.pt")):
            raise CheckpointError(f"{self.dir} is a checkpoint of the old layout (HF dir + trainer_state.pt): "
                                  "resume it with the code that wrote it, or start afresh with --overwrite")
        return name

    def load(self, model, optimizer, scheduler):
        """Load the newest whole state into the sharded model and its optimizer (any world size); returns the
        trainer's state dict (with "step"), or None when there is nothing to resume."""
        path = self.whole()
        if path is None:
            return None
        model_sd, optim_sd = get_state_dict(model, optimizer)
        both = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(both, checkpoint_id=path)  # each rank reads the pieces of its own shards
        set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"])
        trainer = torch.load(os.path.join(path, "trainer.pt"), weights_only=True, map_location="cpu")
        scheduler.load_state_dict(trainer["scheduler"])
        self.world.say(f"resumed from {path} at step {trainer['state']['step']}")
        return trainer["state"]

    def whole(self):
        """The newest state that matches its marker (on every rank): the pointer's, else -- it is damaged --
        the newest whole one before it, which the pointer then names (the damaged ones are set aside)."""
        latest = self._main(self._named)  # the old layout's error
        if latest is None:
            return None
        candidates = [latest] + self._main(lambda: self._older(latest))
        damaged = []
        for name in candidates:
            problem = self._verify(os.path.join(self.dir, name))
            if problem is None:
                break
            damaged.append((name, problem))
        else:
            raise CheckpointError(f"{self.dir} holds no whole checkpoint to resume (latest names {latest}): "
                                  + "; ".join(f"{n}: {p}" for n, p in damaged))
        for bad, problem in damaged:
            self.world.say(f"checkpoint {os.path.join(self.dir, bad)} is damaged ({problem}): set aside as "
                           f"{bad}{DAMAGED}, resuming from {name}")
        if damaged:
            self._main(lambda: self._set_aside(name, [n for n, _ in damaged]))
        return os.path.join(self.dir, name)

    def _verify(self, path):
        """None when every file of the state matches its marker, else the first problem, in one line. Each
        rank reads its share of the files (a cold read: the load reads them again, from the page cache)."""
        files, problem = self._main(lambda: _read_marker(path))
        if problem:
            return problem
        names = sorted(files)
        mine = names[self.world.rank::self.world.size]
        problems = _merged(self._everyone(lambda: {n: _check(path, n, *files[n]) for n in mine}))
        return next((f"{n}: {problems[n]}" for n in names if problems[n]), None)

    def _set_aside(self, whole, damaged):
        """The pointer names the whole state first (a kill between leaves it right, and the next save's prune
        removes what is newer), then each damaged state is renamed: its step's next save gets a fresh name."""
        write_atomic(os.path.join(self.dir, "latest"), whole)
        _fsync_dir(self.dir)
        for name in damaged:
            target = os.path.join(self.dir, name + DAMAGED)
            if not os.path.isdir(os.path.join(self.dir, name)):
                continue  # the pointer named a directory that is gone: nothing to keep
            if os.path.exists(target):  # the same step damaged before: the newer evidence wins
                shutil.rmtree(target)
            os.rename(os.path.join(self.dir, name), target)
        _fsync_dir(self.dir)

    def export(self, model, tokenizer, step):
        """OUT/exports/step_N: the weights in HF format (one tensor in memory at a time), config, tokenizer;
        then OUT/hf points at it. An export that is already complete is not written again."""
        final = os.path.join(self.exports, f"step_{step:06d}")
        tmp = final + ".tmp"
        if not all_finite(model):
            raise FloatingPointError(f"non-finite weights at step {step}: no export written to {final}")
        try:
            if not self._main(lambda: os.path.isdir(final)):  # complete exports are renamed into place
                self._main(lambda: _start_export(tmp, model, tokenizer))
                _fault("export_started")
                err = hfio.write_safetensors(os.path.join(tmp, "model.safetensors"), _entries(model), self.world)
                self._main(lambda: _raise(err))
                _fault("export_written")
                self._main(lambda: _finish_export(tmp, final))
                _fault("export_renamed")
            self._main(lambda: _point(os.path.join(self.out_dir, "hf"), os.path.relpath(final, self.out_dir)))
            _fault("export_linked")
        except Exception as e:
            raise CheckpointError(f"HF export to {final} failed ({_reason(e)})") from e

    def _main(self, fn):
        """fn() on rank 0 (the file work); its value, or its error as a CheckpointError, on every rank: no rank
        is left waiting at a collective for one that failed."""
        out = [None, None]
        if self.world.main:
            try:
                out[0] = fn()
            except Exception as e:
                out[1] = _reason(e)
        dist.broadcast_object_list(out, src=0)
        if out[1] is not None:
            raise CheckpointError(out[1])
        return out[0]

    def _everyone(self, fn):
        """fn() on every rank (its share of the file work); all ranks' values, in rank order, on every rank, or
        the first failing rank's error as a CheckpointError on all."""
        try:
            mine = (fn(), None)
        except Exception as e:
            mine = (None, f"rank {self.world.rank}: {_reason(e)}")
        out = [None] * self.world.size
        dist.all_gather_object(out, mine)
        err = next((e for _, e in out if e), None)
        if err:
            raise CheckpointError(err)
        return [v for v, _ in out]


# ---- the marker: every file's size and CRC-32 ----
# CRC-32 (zlib) runs at ~5 GiB/s from the page cache, 4x sha256 / blake2b; it catches every truncation, burst
# and bit flip of a disk or a torn copy (it is no defence against tampering, which is not the threat here).


def _own_shards(path, rank):
    """The shard files DCP's FileSystemWriter wrote for `rank` (__RANK_N.distcp)."""
    return sorted(f for f in os.listdir(path) if f.startswith(f"__{rank}_") and f.endswith(".distcp"))


def _merged(dicts):
    return {k: v for d in dicts for k, v in d.items()}


def _crc32(path, chunk=8 << 20):
    crc, buf = 0, bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def _sums(path, names):
    return {n: [os.path.getsize(os.path.join(path, n)), _crc32(os.path.join(path, n))] for n in names}


def _check(path, name, size, crc):
    """None when the file matches its size and CRC-32, else what is wrong."""
    p = os.path.join(path, name)
    if not os.path.exists(p):
        return "missing file"
    got = os.path.getsize(p)
    if got != size:
        return f"{'truncated' if got < size else 'grown'}: size {got} != {size}"
    return None if _crc32(p) == crc else "checksum mismatch"


def _marker(body):
    """The marker's text: its body and a CRC-32 of the body, so that a damaged marker is itself detected."""
    return json.dumps({**body, "crc32": _body_crc(body)})


def _body_crc(body):
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode()):08x}"


def _read_marker(path):
    """(files, None) for a whole marker, ({}, None) for one written before the marker had files, or (None,
    what is wrong)."""
    if not os.path.isdir(path):
        return None, "directory missing"
    try:
        with open(os.path.join(path, MARKER), "rb") as f:
            body = json.loads(f.read())
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return None, f"{MARKER}: missing file"
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"{MARKER}: unreadable ({type(e).__name__})"
    if "files" not in body and "crc32" not in body:  # an older run's marker: step and world size only
        return {}, None
    crc = body.pop("crc32", None)
    if crc != _body_crc(body) or not isinstance(body.get("files"), dict):
        return None, f"{MARKER}: checksum mismatch"
    return body["files"], None


def _reason(e):
    """One line: the first failing rank's error for DCP's multi-rank exception, else the error itself."""
    if isinstance(e, CheckpointException):
        rank, (e, _) = next(iter(e.failures.items()))
        return f"rank {rank}: {_reason(e)}"
    return str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}"


def _start_export(tmp, model, tokenizer):
    parent = os.path.dirname(tmp)
    for entry in os.listdir(parent) if os.path.isdir(parent) else []:
        if entry.endswith(".tmp"):  # a killed export
            shutil.rmtree(os.path.join(parent, entry))
    os.makedirs(tmp)
    hfio.write_config(tmp, model, tokenizer)


def _raise(err):
    if err is not None:
        raise err


def _finish_export(tmp, final):
    for entry in os.listdir(tmp):
        with open(os.path.join(tmp, entry), "rb+") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(os.path.dirname(final))


def _point(link, target):
    """Replace the symlink `link` with one to `target`, atomically (and remove what a kill here left)."""
    parent, name = os.path.split(link)
    for entry in os.listdir(parent):
        if entry.startswith(name + ".tmp"):
            os.remove(os.path.join(parent, entry))
    os.symlink(target, f"{link}.tmp{os.getpid()}")
    os.replace(f"{link}.tmp{os.getpid()}", link)


def _save_synced(obj, path):
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def all_finite(model) -> bool:
    """True when every local parameter shard is finite (checked on every rank, agreed by all)."""
    def finite(t):  # in pieces: isfinite on a whole embedding would allocate a copy of it
        return all(bool(torch.isfinite(c).all()) for c in hfio.local(t).detach().reshape(-1).split(1 << 22))
    ok = torch.tensor([float(all(finite(p) for p in model.parameters()))],
                      device="cuda" if torch.cuda.is_available() else "cpu")  # NCCL reduces CUDA tensors only
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


# ---- the output directory: one run at a time ----


def write_atomic(path, text):
    """Write a file so that a reader (or a kill) sees the old content or the new, never half of it."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Lock:
    def __init__(self, fd):
        self.fd = fd

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


RUN_FILES = ("metrics.jsonl", "config.json", "ckpt", "exports", "hf", "ckpt.tmp", "ckpt.old")  # ckpt.*: older layout
PHASES = ("", "sft", "rl")  # the demo writes OUT/sft and OUT/rl


def claim_output_dir(out, world: World, resume=False, overwrite=False):
    """Rank 0 holds OUT/.lock for the life of the run: a second run into the same directory is refused.
    A fresh run into a directory that holds a previous run is refused unless --resume or --overwrite
    (which removes the previous run's files, and nothing else)."""
    err = ""
    lock = _Lock(None)
    if world.main:
        os.makedirs(out, exist_ok=True)
        fd = os.open(os.path.join(out, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock = _Lock(fd)
        except BlockingIOError:
            os.close(fd)
            err = f"{out} is in use by another run (its .lock is held); choose another --out"
        previous = [os.path.join(out, p, f) for p in PHASES for f in RUN_FILES if os.path.lexists(os.path.join(out, p, f))]
        if not err and previous and not (resume or overwrite):
            err = f"{out} holds a previous run ({previous[0]}): pass --resume to continue it or --overwrite to replace it"
        if not err and overwrite and not resume:
            for path in previous:
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    errs = [err]
    dist.broadcast_object_list(errs, src=0)
    if errs[0]:
        lock.release()
        raise SystemExit(f"config error: {errs[0]}")
    return lock
