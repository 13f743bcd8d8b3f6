"""infra -- the plumbing a learner may skip on first reading: every module here is machinery any trainer
needs, none of it is the method. The top-level files (data, sampler, genrm, fapo, grpo, train) read as
FAPO because these live apart.

    build.py           a run's parts from its flags: tokenizer, task and rows, the sharded policy, the judges
    fsdp.py            the torchrun world, FSDP2 sharding, meta-device loading, gathering for sampling
    checkpoint.py      kill-safe sharded checkpoints (torch.distributed.checkpoint), HF exports, the run's lock
    safetensors_io.py  reading a rank's rows from safetensors files; streaming an export to rank 0
    fastdecode.py      the sampler's fast path: a static KV cache, row buckets, a compiled one-token step
    genrm_client.py    HTTP transport to a served GenRM (vLLM / SGLang): timeouts, retries, failure kinds
    runlog.py          metrics.jsonl, the progress bar, the optional W&B mirror, the closing table
"""
