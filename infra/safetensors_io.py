"""infra/safetensors_io.py -- HF model directories, one shard at a time: how infra/fsdp.py loads a model that no rank holds whole,
and exports one in the format from_pretrained and vLLM read.

    files = safetensors_index(dir)               {tensor name: file} (one model.safetensors, or an index)
    read_rows(file, name, t)                     fill this rank's rows of t (FSDP2's Shard(0) DTensor) from a file
    err = write_safetensors(path, entries, world)   stream (name, sharded tensor) pairs into one file on rank 0
    write_config(dir, model, tokenizer)          config.json, generation_config.json, the tokenizer

Why by hand: safetensors' save_file wants every tensor in memory at once (the whole model on rank 0, plus a
copy while it serialises). The format is simple: 8 bytes of header length, a JSON header (dtype, shape,
byte offsets), then the raw bytes in order; so the header is written first and each tensor streamed after.
Skip on first read: it is file-format plumbing under loading and exporting.
"""
import copy
import json
import math
import os
import struct

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Shard

BLOCK_BYTES = 64 << 20  # read or send at most this much at a time: the transient per rank stays small
DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64", torch.int32: "I32",
          torch.uint8: "U8", torch.bool: "BOOL"}


def local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def rows_of(t, r):
    """(first row, row count) of mesh rank r's shard of t: torch.chunk's split along dim 0, as FSDP2 shards."""
    if not isinstance(t, DTensor):
        return 0, t.shape[0]
    if tuple(t.placements) != (Shard(0),):
        raise NotImplementedError(f"only FSDP's Shard(0) placement is supported, got {t.placements}")
    chunk = math.ceil(t.shape[0] / t.device_mesh.size())
    start = min(r * chunk, t.shape[0])
    return start, min(t.shape[0], start + chunk) - start


def block_rows(t):
    return max(1, BLOCK_BYTES // max(1, math.prod(t.shape[1:]) * t.element_size()))


# ---- reading ----


def safetensors_index(path):
    """{tensor name: file} of an HF directory."""
    from safetensors import safe_open
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return {k: os.path.join(path, v) for k, v in json.load(f)["weight_map"].items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.exists(single):
        raise ValueError(f"{path}: no model.safetensors(.index.json); only safetensors checkpoints are read")
    with safe_open(single, "pt") as f:
        return {k: single for k in f.keys()}


def read_rows(file, name, t):
    """Fill this rank's shard of t with its rows of tensor `name`, block by block (converted to t's dtype).
    The file is opened per tensor: its mapped pages leave this process's memory when it closes."""
    from safetensors import safe_open
    mine = local(t)
    start, n = rows_of(t, t.device_mesh.get_local_rank() if isinstance(t, DTensor) else 0)
    with safe_open(file, "pt") as f:
        part = f.get_slice(name)
        if list(part.get_shape()) != list(t.shape):
            raise ValueError(f"{file}: {name} has shape {part.get_shape()}, the model wants {list(t.shape)}")
        if mine.dim() == 0:
            return mine.copy_(f.get_tensor(name))
        step = block_rows(mine)
        for a in range(0, n, step):
            mine[a:a + step].copy_(part[start + a:start + min(a + step, n)])


# ---- writing ----


def write_safetensors(path, entries, world):
    """Stream (name, tensor) entries into one safetensors file written by rank 0: each tensor's rows, rank
    by rank, sent to rank 0 in blocks. Every rank calls this (it is a sequence of sends and receives);
    none holds more than a block beyond its own shards. Returns rank 0's error (an OSError) or None, only
    once every block has moved: a rank that stopped halfway would leave the others waiting."""
    header, offset = {}, 0
    for name, t in entries:
        n = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    f, err = None, None

    def write(x):
        nonlocal err
        if f is not None and err is None:
            try:
                f.write(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            except OSError as e:
                err = e
    if world.main:
        try:
            f = open(path, "wb")
            f.write(struct.pack("<Q", len(blob)) + blob)
        except OSError as e:
            err = e
    with torch.no_grad():
        for _, t in entries:
            if not isinstance(t, DTensor):
                write(t)
                continue
            step = block_rows(t)
            for r in range(t.device_mesh.size()):
                src = dist.get_global_rank(t.device_mesh.get_group(), r)
                for a in range(0, rows_of(t, r)[1], step):
                    if src == world.rank:  # NCCL sends CUDA tensors (offloaded shards live on the CPU)
                        block = t.to_local()[a:a + step].to(world.device).contiguous()
                        write(block) if world.main else dist.send(block, dst=0)
                    elif world.main:
                        block = torch.empty((min(step, rows_of(t, r)[1] - a), *t.shape[1:]), dtype=t.dtype,
                                            device=world.device)
                        dist.recv(block, src=src)
                        write(block)
    if f is not None:
        try:
            f.close()
        except OSError as e:
            err = err or e
    return err


def write_config(path, model, tokenizer):
    """config.json (the model's own class, not FSDP's wrapper; fp32, what the weights file holds), the
    generation config (its EOS ids stop rollouts) and the tokenizer."""
    config = copy.deepcopy(model.config)
    config.architectures = [next(c.__name__ for c in type(model).__mro__ if not issubclass(c, FSDPModule))]
    config.dtype = torch.float32
    config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)
    tokenizer.save_pretrained(path)
