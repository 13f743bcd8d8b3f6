"""logprobs.py -- per-token log-probs of sampled responses under the policy: a chunked log-softmax (a custom
autograd function, so a 151,936-word vocabulary never holds a full float32 log-softmax and its gradient at once),
the batch layouts the forward reads, and the entropy that is logged. grpo.py's update calls response_logprobs.

  log-prob     logp_t = log softmax(z_t / T)[y_t] = z_t[y_t] / T - logsumexp(z_t / T)
  entropy      H_t = logsumexp(z_t / T) - sum_v softmax(z_t / T)_v z_t,v / T

Batch layouts: [left-padded prompt | right-padded response], one row a rollout (collate, so the logits that
predict the response are the last R + 1 positions); or each distinct prompt once, then its rollouts' responses
attending to its KV cache (collate_shared: a group of G rollouts puts its prompt through the model once).

    logp, ent = response_logprobs(model, collate_shared(prompts, responses, pad, device), R, T, want_entropy=True)
"""
import torch
from transformers import DynamicCache

from sampler import cache_kwarg_name

DEFAULT_CHUNK_ROWS = 512  # 512 x 151,936 float32 = 311 MB per temporary


# ---- chunked log-probs and entropy ----

def _flat_chunks(n_rows, chunk_size):
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, n_rows, chunk_size):
        yield start, min(start + chunk_size, n_rows)


def _upcast(chunk, temperature):
    """chunk.float() / temperature with a single float32 buffer (copy=True: never alias logits)."""
    return chunk.to(torch.float32, copy=True).div_(temperature)  # (c, V)


class _ChunkedLogProb(torch.autograd.Function):
    """log softmax(logits / temperature)[target], upcasting chunk_size rows at a time so that
    neither forward nor backward holds a float32 copy of the full (N, V) logits."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk_size):
        # logits (N, V) any float dtype; targets (N,) int64
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)  # (N,)
        lse = torch.empty_like(out)                                                     # (N,)
        for s, e in _flat_chunks(logits.shape[0], chunk_size):
            # Deviation: verl divides the bf16 logits by temperature in place (one bf16
            # rounding); we upcast first, which is the exact value.
            x = _upcast(logits[s:e], temperature)  # (c, V)
            lse[s:e] = torch.logsumexp(x, dim=-1)
            out[s:e] = x.gather(1, targets[s:e, None]).squeeze(1) - lse[s:e]
        ctx.save_for_backward(logits, targets, lse)  # the original logits, no copy
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, targets, lse = ctx.saved_tensors
        grad_out = grad_out.float()
        grad = torch.empty_like(logits)  # (N, V) in the logits' dtype
        for s, e in _flat_chunks(logits.shape[0], ctx.chunk_size):
            x = _upcast(logits[s:e], ctx.temperature)               # (c, V)
            g = torch.exp(x - lse[s:e, None]).mul_(-grad_out[s:e, None])  # -softmax * g
            g.scatter_add_(1, targets[s:e, None], grad_out[s:e, None])   # + onehot * g
            grad[s:e] = g.div_(ctx.temperature)
        return grad, None, None, None


def token_logprobs(logits, targets, temperature=1.0, chunk_size=DEFAULT_CHUNK_ROWS):
    """Per-token log-probs (float32, shape of targets) of targets (B, T) under logits (B, T, V)
    / temperature. Differentiable; memory is O(chunk_size * V) in float32 beyond the logits.
    Non-contiguous logits (e.g. logits[:, :-1]) are copied once by reshape, in their own dtype."""
    V = logits.shape[-1]
    flat = _ChunkedLogProb.apply(logits.reshape(-1, V), targets.reshape(-1).long(),
                                 float(temperature), int(chunk_size))  # (B*T,)
    return flat.view(targets.shape)


@torch.no_grad()
def token_entropy(logits, temperature=1.0, chunk_size=DEFAULT_CHUNK_ROWS):
    """Per-token entropy (float32, (B, T)) of softmax(logits / temperature), for logging."""
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)                                               # (N, V)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)  # (N,)
    for s, e in _flat_chunks(flat.shape[0], chunk_size):
        x = _upcast(flat[s:e], temperature)  # (c, V)
        # verl's entropy_from_logits: H = logsumexp(x) - sum softmax(x) * x. We normalise p with
        # torch.sum instead of calling torch.softmax, whose CPU kernel sums 150k floats
        # sequentially and costs up to ~3e-4 in H.
        lse = torch.logsumexp(x, -1, keepdim=True)  # (c, 1)
        p = torch.exp(x - lse)                      # (c, V)
        p /= p.sum(-1, keepdim=True)
        out[s:e] = lse.squeeze(-1) - (p * x).sum(-1)
    return out.view(logits.shape[:-1])


# ---- batches: [left-padded prompt | right-padded response] ----

def collate(prompts, responses, pad, device):
    """Every response starts at the same column P, so logits_to_keep = R + 1 gives exactly the
    positions that predict response tokens. Masks come from lengths, never from the pad id."""
    P = max(len(x) for x in prompts)
    R = max(max(len(y) for y in responses), 1)
    B = len(prompts)
    ids = torch.full((B, P + R), pad, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    for i, (x, y) in enumerate(zip(prompts, responses)):
        ids[i, P - len(x):P + len(y)] = torch.tensor(x + y, dtype=torch.long)
        attn[i, P - len(x):P + len(y)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)                     # (B, P+R)
    resp_mask = attn[:, P:].float()                               # (B, R)
    targets = torch.cat([ids[:, P:], torch.zeros(B, 1, dtype=torch.long)], 1)  # (B, R+1): last is a dummy
    return {k: v.to(device) for k, v in dict(ids=ids, attn=attn, pos=pos, mask=resp_mask, targets=targets).items()}, R


def collate_shared(prompts, responses, pad, device):
    """A micro-batch laid out to run each distinct prompt once (a group's G rollouts share one): the prompts
    (U, P) left-padded, rows (B,) the prompt of each response, and the responses (B, R) right-padded, which
    attend to their prompt's keys and values. Masks and positions come from lengths, never from the pad id."""
    index = {}
    rows = [index.setdefault(tuple(x), len(index)) for x in prompts]  # (B,) position in the distinct prompts
    distinct = [list(x) for x in index]
    # R >= 2: every micro-batch makes the same two forwards on every rank (FSDP's collectives), a filler's too
    P, R, B = max(len(x) for x in distinct), max(max(len(y) for y in responses), 2), len(prompts)
    p_ids = torch.full((len(distinct), P), pad, dtype=torch.long)
    p_attn = torch.zeros((len(distinct), P), dtype=torch.long)
    for i, x in enumerate(distinct):
        p_ids[i, P - len(x):], p_attn[i, P - len(x):] = torch.tensor(x, dtype=torch.long), 1
    r_ids = torch.full((B, R), pad, dtype=torch.long)
    mask = torch.zeros((B, R))
    for i, y in enumerate(responses):
        r_ids[i, :len(y)], mask[i, :len(y)] = torch.tensor(y, dtype=torch.long), 1.0
    rows = torch.tensor(rows)
    lengths = p_attn.sum(-1)[rows]                                     # (B,) prompt length of each row
    batch = dict(p_ids=p_ids, p_attn=p_attn, p_pos=(p_attn.cumsum(-1) - 1).clamp(min=0), rows=rows,
                 r_ids=r_ids, attn=torch.cat([p_attn[rows], mask[:, :-1].long()], 1),  # (B, P + R - 1)
                 r_pos=lengths[:, None] + torch.arange(R - 1)[None], mask=mask)  # (B, R - 1), (B, R)
    return {k: v.to(device) for k, v in batch.items()}, R


def can_share_prompts(model) -> bool:
    """No sliding-window layers: their cache keeps a window, not the full forward's keys. (Gradient checkpointing,
    where HF turns the cache off, is UpdateSettings.share_prompts = False.)"""
    return not any(DynamicCache(config=model.config).is_sliding)


def response_logprobs(model, batch, R, temperature, want_entropy=False):
    """(B, R) log-probs of the response tokens at `temperature` (as sampled), and optionally entropy. A batch
    from collate_shared runs each prompt once: the same values as collate's up to float rounding, with the
    gradient of every response flowing back into its prompt's keys and values."""
    if "rows" not in batch:
        logits = model(input_ids=batch["ids"], attention_mask=batch["attn"], position_ids=batch["pos"],
                       logits_to_keep=R + 1).logits                   # (B, R+1, V)
        # targets carry one dummy column so no slice of the logits is copied; its output is dropped
        logp = token_logprobs(logits, batch["targets"], temperature)[:, :R]  # (B, R)
        return logp, _entropy(logits, temperature)[:, :R] if want_entropy else None
    cache = DynamicCache(config=model.config)
    cached = {cache_kwarg_name(model): cache, "use_cache": True}
    head = model(input_ids=batch["p_ids"], attention_mask=batch["p_attn"], position_ids=batch["p_pos"],
                 logits_to_keep=1, **cached).logits[batch["rows"]]  # (B, 1, V): predicts response token 0
    cache.batch_select_indices(batch["rows"])  # (B, ...) each row gets its prompt's keys and values
    tail = model(input_ids=batch["r_ids"][:, :-1], attention_mask=batch["attn"], position_ids=batch["r_pos"],
                 **cached).logits  # (B, R - 1, V): predicts response tokens 1..R-1
    parts = [(head, batch["r_ids"][:, :1]), (tail, batch["r_ids"][:, 1:])]
    logp = torch.cat([token_logprobs(x, y, temperature) for x, y in parts], 1)  # (B, R)
    return logp, torch.cat([_entropy(x, temperature) for x, _ in parts], 1) if want_entropy else None


def _entropy(logits, temperature):
    with torch.no_grad():  # logged, never trained on: no autograd graph for it
        return token_entropy(logits.detach(), temperature)
