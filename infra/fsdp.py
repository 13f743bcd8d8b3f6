"""infra/fsdp.py -- the torchrun world, FSDP2 sharding, loading without a full copy per rank, gathering for
sampling. Nothing here knows about RL.

    world = World()                         the one place that reads torchrun's env (a plain `python` is a world of 1)
    close()                                 the end of a run: the process group and its threads gone (issue 25)
    model = shard(model, world, dtype)      FSDP2: one group per decoder layer, then the root
    model = load_pretrained(dir, world, dtype)   built on the meta device, sharded, each rank reads its own rows
    ref = frozen_copy(model, world, dtype)  a frozen copy with the same sharding (the KL reference)
    with gathered(model): ...               unshard once, so a decode loop runs with no collectives

Why apart (skip on first read): every trainer needs this machinery and none of it is the method; train.py
reads as the RL step because this lives here (nanoGPT keeps the same split for its DDP boilerplate).
"""
import contextlib
import gc
import os
import threading
import time

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

from infra import safetensors_io as hfio

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
            if "TORCHELASTIC_RUN_ID" in os.environ:  # before the rendezvous, which waits for a dead launcher too
                watch_parent()
            if "MASTER_ADDR" in os.environ:
                dist.init_process_group("nccl" if cuda else "gloo", device_id=self.device if cuda else None)
            else:  # plain `python train.py`: a world of one, no network needed
                dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
        self.main = self.rank == 0

    def sum(self, values, op=dist.ReduceOp.SUM):
        """All-reduce a list of floats (one collective); what grpo.policy_update calls."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def max(self, values):
        return self.sum(values, dist.ReduceOp.MAX)

    def sum_named(self, sums: dict) -> dict:
        """All-reduce named sums in one collective: statistics by name, never by position. Every rank passes
        the same names."""
        names = sorted(sums)
        return dict(zip(names, self.sum([float(sums[k]) for k in names])))

    def say(self, msg):
        if self.main:
            print(msg, flush=True)


def close():
    """Tear the process group down for real, its C++ worker threads joined before the interpreter's teardown.

    Why (issue 25, found with gdb on a core dump of an aborting 2-process run): a gloo worker thread
    (ProcessGroupGloo::runLoop) frees a finished collective's work object (~AsyncBarrierWork holding an
    AsyncAllgatherCoalescedWork) whose tensors are Python's, so it takes the GIL; once Py_FinalizeEx has begun,
    taking the GIL ends the thread (pthread_exit), whose forced unwind through that noexcept destructor calls
    std::terminate: SIGABRT, "terminate called without an active exception", in ~7% of runs. The worker is
    still there because destroy_process_group() alone joins nothing: DTensor's caches (mesh topology,
    redistribute planners, sharding propagation; torch 2.13) keep the device mesh, hence the group, alive.
    Clearing them and collecting the FSDP modules' reference cycles drops the last reference, and
    ~ProcessGroupGloo joins its threads here. Call it once the models are unreferenced (train.main does)."""
    if not dist.is_initialized():
        return
    dist.barrier()  # nobody tears the group down while a peer still talks to it
    try:  # private names of torch 2.13; if a later torch moves them, the group is still destroyed below
        from torch.distributed.tensor import _collective_utils, _redistribute
        from torch.distributed.tensor.debug import _clear_sharding_prop_cache
        _collective_utils.MeshTopoInfo.build_from_mesh.cache_clear()
        _redistribute.clear_redistribute_planner_cache()
        _redistribute._gen_transform_infos.cache_clear()
        _clear_sharding_prop_cache()
    except (ImportError, AttributeError) as e:
        print(f"fsdp.close: DTensor's caches not cleared ({e}); gloo threads may outlive the group", flush=True)
    gc.collect()  # FSDP modules sit in reference cycles: their groups go only with them
    dist.destroy_process_group()


def watch_parent():
    """Under torchrun: exit when the launcher dies (killing only torchrun must not leave workers training)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.25)  # a getppid per poll: nothing next to a training step
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


# ---- sharding and gathering ----


def shard(model, world: World, compute_dtype, offload=False):
    """FSDP2: each decoder layer its own group, then the root (embeddings, norm, head). fp32 master
    weights; on GPU bf16 compute with fp32 gradient reduction. offload: parameters, gradients and the
    optimizer state live in CPU memory between uses (FSDP2's CPUOffloadPolicy; verl's param/optimizer offload).
    A model built on the meta device is given memory for its shards only (to be filled by the caller)."""
    kw = dict(mp_policy=MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32))
    offload = offload and world.device.type == "cuda"
    if offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    meta = any(p.is_meta for p in model.parameters())
    if not meta and not offload:
        model.to(world.device)
    for layer in model.model.layers:  # where transformers' causal LMs keep their decoder blocks
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    if meta:  # offloaded shards live on the CPU; buffers are not FSDP's and stay on the device
        model.to_empty(device="cpu" if offload else world.device)
        _reset_buffers(model, world.device)
    return model


def _reset_buffers(model, device):
    """Non-persistent buffers (rotary inv_freq, Gemma's embed_scale, ...) are computed in __init__ and never
    stored: built on the meta device they hold nothing, and to_empty leaves garbage. They are set the way
    transformers sets them after its own meta-device init, by the model class's _init_weights(module), which
    knows every such buffer of its family (a module's constructor need not take a config: Gemma-3's scaled
    embedding does not). Its parameters are swapped for meta stand-ins meanwhile, so nothing else is touched
    (the weights are read or copied right after)."""
    for module in model.modules():
        if not any(module._buffers.get(n) is not None for n in module._non_persistent_buffers_set):
            continue
        params = module._parameters
        module._parameters = {k: None if p is None else torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype,
                              device="meta"), requires_grad=False) for k, p in params.items()}
        try:
            with torch.no_grad():
                model._init_weights(module)
        finally:
            module._parameters = params


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
    """The whole model on CPU, on rank 0 (empty elsewhere). For tests and small models only."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# ---- loading: the meta device, then each rank reads only its own rows ----


def load_pretrained(path, world: World, compute_dtype, offload=False, configure=None):
    """An HF model directory, sharded, without the whole model on any rank: built on the meta device (no
    memory), sharded, then each rank reads its own rows of every tensor from the safetensors files.
    configure(model) runs before sharding (context length, gradient checkpointing). fp32 master weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    files = hfio.safetensors_index(path)
    with torch.device("meta"):  # trust_remote_code stays off: the model's own code is not run
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    if os.path.exists(os.path.join(path, "generation_config.json")):  # its EOS ids stop rollouts
        model.generation_config = GenerationConfig.from_pretrained(path)
    if configure:
        configure(model)
    shard(model, world, compute_dtype, offload)
    with torch.no_grad():
        for name, t in entries(model):
            if name not in files:
                raise ValueError(f"{path}: no tensor {name!r} in its safetensors files")
            hfio.read_rows(files[name], name, t)
    unused = set(files) - set(model.state_dict())  # a tied lm_head.weight is in the state dict, read once
    if unused:  # from_pretrained ignores them too (e.g. an old checkpoint's rotary inv_freq)
        world.say(f"{path}: {len(unused)} tensors not used by the model, e.g. {sorted(unused)[:3]}")
    return model


def frozen_copy(model, world: World, compute_dtype, offload=False):
    """A frozen copy of a sharded model with the same sharding (the KL reference): built on the meta device,
    then each rank copies its own shards. No rank ever holds the whole model."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        ref = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    ref.generation_config = model.generation_config
    shard(ref, world, compute_dtype, offload)
    with torch.no_grad():
        for (_, r), (_, q) in zip(entries(ref), entries(model), strict=True):
            hfio.local(r).copy_(hfio.local(q))
    return ref.eval().requires_grad_(False)


def entries(model):
    """(name, tensor) of everything a checkpoint holds: parameters (a tied one once) and persistent buffers."""
    buffers = {n for n, _ in model.named_buffers()}
    params = dict(model.named_parameters())
    return [(n, params.get(n, t)) for n, t in model.state_dict(keep_vars=True).items() if n in params or n in buffers]

