"""fsdp.py -- the plumbing under train.py: the torchrun world, FSDP2 sharding, gathering for sampling,
checkpoints. Nothing here knows about RL; train.py reads as the algorithm because this lives apart.

    world = World()                         the one place that reads torchrun's env (a plain `python` is a world of 1)
    model = shard(model, world, dtype)      FSDP2: one group per decoder layer, then the root
    with gathered(model): ...               unshard once, so a decode loop runs with no collectives
    ckpt = Checkpointer(out_dir, world)     save / load the training state; export HF weights

Why a module of its own: train.py is the story of an RL step; this is the machinery every trainer needs and
a reader can skip (nanoGPT keeps the same split between train.py and its DDP/checkpoint boilerplate).
"""
import contextlib
import fcntl
import os
import shutil
import threading
import time

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

# ---- the world: torchrun's environment, read in one place ----


class World:
    """rank, size, device of this process; one all-reduce helper. `python train.py` is a world of one."""

    def __init__(self):
        self.rank = int(os.environ.get("RANK", 0))
        self.size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", self.local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            if "MASTER_ADDR" in os.environ:
                dist.init_process_group("nccl" if cuda else "gloo", device_id=self.device if cuda else None)
            else:  # plain `python train.py`: a world of one, no network needed
                dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
        self.main = self.rank == 0
        if "TORCHELASTIC_RUN_ID" in os.environ:
            watch_parent()

    def sum(self, values, op=dist.ReduceOp.SUM):
        """All-reduce a list of floats (one collective); what grpo.policy_update calls."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def max(self, values):
        return self.sum(values, dist.ReduceOp.MAX)

    def say(self, msg):
        if self.main:
            print(msg, flush=True)


# ---- sharding and gathering ----


def watch_parent():
    """Under torchrun: exit when the launcher dies (killing only torchrun must not leave workers training)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def shard(model, world: World, compute_dtype, offload=False):
    """FSDP2: each decoder layer its own group, then the root (embeddings, norm, head). fp32 master
    weights; on GPU bf16 compute with fp32 gradient reduction. offload: parameters, gradients and the
    optimizer state live in CPU memory between uses (FSDP2's CPUOffloadPolicy; verl's param/optimizer offload)."""
    kw = dict(mp_policy=MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32))
    if offload and world.device.type == "cuda":
        kw["offload_policy"] = CPUOffloadPolicy()
    else:
        model.to(world.device)
    for layer in model.model.layers:  # where transformers' causal LMs keep their decoder blocks
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


@contextlib.contextmanager
def gathered(model):
    """Unshard every FSDP group once for sampling: the decode loop then runs with no collectives, so
    ranks may take different numbers of decode steps. Every rank must enter (the gather is one)."""
    groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in groups:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in groups:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def full_state_dict(model):
    """The whole model on CPU, on rank 0 (empty elsewhere)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# ---- checkpoints ----


class Checkpointer:
    """OUT/ckpt: HF-format weights + tokenizer (from_pretrained loads them) + trainer state for --resume.
    Written to ckpt.tmp, then swapped in: a kill mid-save leaves the previous checkpoint intact."""

    def __init__(self, out_dir, world: World):
        self.out_dir, self.world = out_dir, world
        self.final = os.path.join(out_dir, "ckpt")

    def save(self, model, optimizer, scheduler, tokenizer, state: dict):
        if not all_finite(model):  # a NaN must never replace the last good checkpoint
            raise FloatingPointError(f"non-finite weights at step {state.get('step')}: not saved; "
                                     f"{self.final} keeps the last good checkpoint")
        msd = full_state_dict(model)
        osd = get_optimizer_state_dict(model, optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.world.main:
            tmp, old = self.final + ".tmp", self.final + ".old"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, state_dict=msd)
            tokenizer.save_pretrained(tmp)
            torch.save({"optimizer": osd, "scheduler": scheduler.state_dict(), **state},
                       os.path.join(tmp, "trainer_state.pt"))
            # every intermediate state is one that latest() and the next save understand: a leftover ckpt.old
            # (a kill after the swap) is removed first, never renamed onto
            if os.path.exists(self.final):
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.final, old)
            os.replace(tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def latest(self):
        """The directory to resume from, or None. ckpt.old survives a kill between the two renames of save."""
        paths = [self.final, self.final + ".old"]
        return next((q for q in paths if os.path.exists(os.path.join(q, "trainer_state.pt"))), None)

    def load(self, model, optimizer, scheduler):
        """Load the latest checkpoint into the sharded model and its optimizer; returns its state dict
        (with "step"), or None when there is nothing to resume."""
        path = self.latest()
        if path is None:
            return None
        from transformers import AutoModelForCausalLM
        # from_pretrained reads sharded safetensors and re-ties tied weights; then every rank keeps its shard
        full = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True))
        state = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=True, map_location="cpu")
        set_optimizer_state_dict(model, optimizer, state.pop("optimizer"), options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(state.pop("scheduler"))
        self.world.say(f"resumed from {path} at step {state['step']}")
        return state


def all_finite(model) -> bool:
    """True when every local parameter shard is finite (checked on every rank, agreed by all)."""
    ok = torch.tensor([float(all(bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
                                 for p in model.parameters()))])
    if dist.get_backend() == "nccl":  # NCCL reduces device tensors only (parameters may be offloaded to CPU)
        ok = ok.cuda()
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


RUN_FILES = ("metrics.jsonl", "config.json", "ckpt", "ckpt.tmp", "ckpt.old")
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
        previous = [os.path.join(out, p, f) for p in PHASES for f in RUN_FILES if os.path.exists(os.path.join(out, p, f))]
        if not err and previous and not (resume or overwrite):
            err = f"{out} holds a previous run ({previous[0]}): pass --resume to continue it or --overwrite to replace it"
        if not err and overwrite and not resume:
            for path in previous:
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    errs = [err]
    dist.broadcast_object_list(errs, src=0)
    if errs[0]:
        lock.release()
        raise SystemExit(f"config error: {errs[0]}")
    return lock
