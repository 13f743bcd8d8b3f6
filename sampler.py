"""
Readable decode loops for Hugging Face causal LMs, used to produce RL rollouts.

    from sampler import generate
    outs = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=256, temperature=1.0,
                    eos_token_id=[151643, 151645], n=8, seed=0)
    outs[0].tokens, outs[0].logprobs, outs[0].finish_reason   # prompt 0, sample 0

What it does, top to bottom:
  1. split the prompts into waves that fit `max_tokens_in_flight` (all in one wave by default);
  2. left-pad the wave's distinct prompts and prefill them once (attention mask and
     position ids come from the prompt lengths, so a padded row computes what it would alone);
  3. repeat each prompt's KV-cache rows n times (GRPO's G samples share one prefill);
  4. decode one token per step for every live row; every `check_every` steps rows that hit
     EOS (or their length limit) are dropped from the batch and the cache, so finished rows
     stop costing compute without a host sync per token (16 on GPU; 1 on CPU, where it is free).

Two loops do step 4 and give the same samples (logprobs equal to float rounding); `fast` picks one:
  eager  fast=False: transformers' DynamicCache, the batch reshaped at every drop. The reference.
  fast   fast=True: a KV cache allocated once and written in place. On CUDA the one-token step is compiled
         (torch.compile "reduce-overhead", i.e. CUDA graphs), and rows are padded to power-of-two buckets so
         that it sees few shapes. FSDP-wrapped models are not compiled (FSDP hooks and re-gathered weights
         do not belong in a graph); fast="static" never compiles, fast="compile" compiles on CPU too.
         The compiled loop keeps its cache buffers with the model between calls (graphs replay in place;
         `FAST_STATES.pop(model)` frees them).
         Models whose cache cannot be static (sliding windows, ...) warn and run eager.
  fast=None (the default) is fast on CUDA and eager elsewhere (the README's sampler benchmark says why).

The returned logprobs are float32 log_softmax(logits / temperature) of the full, untruncated
distribution (temperature 0 -> temperature 1): what a training forward computes for the same tokens.
Sampling is inverse-CDF with one uniform number per (row, step), drawn from a fixed-size tensor that
covers every row of the wave, so samples depend neither on when finished rows are dropped nor on the loop.

The model is called through `model(...)` so FSDP2 hooks fire; with FSDP2 call `model.unshard()`
first. Tests: `python -m pytest -q tests/test_sampler.py` (parity with `model.generate`, eager vs fast);
benchmarks: `python bench/sampler.py` (CPU), `bash bench/gpu.sh` (GPU).
"""
import contextlib
import inspect
import warnings
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from torch.fx.experimental import _config as fx_config
from transformers import AttentionInterface, AttentionMaskInterface, Cache, DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask


@dataclass
class Completion:
    tokens: list[int]        # generated ids, ending with the EOS id when finish_reason == "stop"
    logprobs: list[float]    # one per token, untruncated distribution at the sampling temperature
    finish_reason: str       # "stop" (hit an EOS id) or "length" (ran out of budget)


# ---- sampling ----

def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties at the k-th value are all kept); k <= 0 keeps all."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth_value = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_value, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p; the top token always stays."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
    drop_sorted = mass_before >= p  # already reached p without this token
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_from_logits(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: token = first index where the CDF exceeds u. Same law as
    torch.multinomial, but consumes exactly one uniform per row, which we control."""
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    target = (uniform * cdf[:, -1]).unsqueeze(-1)  # scale by the total: float32 cumsum may end at 0.9999
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # (B,)
    return tokens.clamp_(max=logits.size(-1) - 1)


def pick_next_tokens(logits, temperature, top_k, top_p, uniform):
    """logits (B, V) from the model -> next tokens (B,) and their float32 logprobs (B,)."""
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
        logprobs = logits.log_softmax(dim=-1)
    else:
        logits = logits / temperature
        logprobs = logits.log_softmax(dim=-1)  # untruncated: matches the training forward
        tokens = sample_from_logits(top_p_filter(top_k_filter(logits, top_k), top_p), uniform)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# ---- model plumbing ----

def cache_kwarg_name(model) -> str:
    """transformers >= 5.2x renamed forward's `past_key_values` to `cache` (the old name warns and is
    removed in 5.40). Pick whichever this model's forward declares, so both versions run without warnings."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def last_logits(model, cache, cache_kwarg, use_logits_to_keep, input_ids, attention_mask, position_ids):
    """One forward through model(...) (so FSDP hooks fire); returns the last position's logits (B, V)."""
    kwargs = {cache_kwarg: cache}
    if use_logits_to_keep:
        kwargs["logits_to_keep"] = 1  # skip the (B, T, V) logits of the prompt at prefill
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, **kwargs)
    return out.logits[:, -1]


# ---- batching ----

def left_pad(prompts: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align the prompts. The mask comes from the lengths, never from comparing ids to
    pad_token_id (the pad id may equal EOS or appear inside a prompt)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)  # (U, L), (U, L)


def plan_waves(lengths: list[int], n: int, max_new_tokens: int, max_tokens_in_flight) -> list[list[int]]:
    """Group consecutive prompts into waves whose padded footprint rows * (longest prompt + max_new_tokens)
    stays under the cap. A prompt is never dropped: one that alone exceeds the cap gets its own wave."""
    if max_tokens_in_flight is None:
        return [list(range(len(lengths)))]
    waves, wave, longest = [], [], 0
    for i, length in enumerate(lengths):
        rows, width = n * (len(wave) + 1), max(longest, length) + max_new_tokens
        if wave and rows * width > max_tokens_in_flight:
            waves.append(wave)
            wave, longest = [], 0
        wave.append(i)
        longest = max(longest, length)
    return waves + [wave]


def prefill(model, prompts, pad_token_id, device):
    """Prefill each distinct prompt once -> DynamicCache, last logits (U, V), prompt mask (U, L)."""
    cache = DynamicCache(config=model.config)  # the config gives sliding-window layers where the model has them
    ids, prompt_mask = left_pad(prompts, pad_token_id, device)  # (U, L)
    position_ids = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (U, L): a padded row sees positions 0..len-1
    logits = last_logits(model, cache, cache_kwarg_name(model), accepts_logits_to_keep(model), ids, prompt_mask,
                         position_ids)
    return cache, logits, prompt_mask


def row_limits(prompts, n, max_new_tokens, context_len, device):
    """Prompt length and generation budget of each of the B = U * n rows (prompt-major); never past the context."""
    lengths = torch.tensor([len(p) for p in prompts for _ in range(n)], device=device)  # (B,)
    return lengths, (context_len - lengths).clamp(max=max_new_tokens)  # (B,), (B,)


def draw_uniform(temperature, generator, num_rows, device):
    """One uniform per wave row and step, live or not: the stream does not depend on when rows are dropped."""
    if temperature == 0:
        return None
    draw_device = generator.device if generator is not None else device
    return torch.rand(num_rows, generator=generator, device=draw_device).to(device)  # (B,)


# ---- eager decode loop (the reference) ----

def decode_wave(model, prompts, n, max_new_tokens, temperature, top_k, top_p, eos_ids, pad_token_id,
                context_len, generator, check_every) -> list[Completion]:
    device = next(model.parameters()).device
    cache_kwarg, keep_arg = cache_kwarg_name(model), accepts_logits_to_keep(model)
    cache, logits, prompt_mask = prefill(model, prompts, pad_token_id, device)  # _, (U, V), (U, L)

    # share the prefill across the n samples: repeat cache rows, not prompts
    if n > 1:
        cache.batch_repeat_interleave(n)
    logits = logits.repeat_interleave(n, dim=0)  # (B, V), B = U * n, prompt-major
    lengths, limits = row_limits(prompts, n, max_new_tokens, context_len, device)  # (B,), (B,)
    num_steps = int(limits.max())
    num_rows, width = lengths.numel(), prompt_mask.size(1)
    # attention mask for prompt + every future token, sliced per step; generated slots are real tokens
    mask = torch.cat([prompt_mask.repeat_interleave(n, dim=0),
                      torch.ones(num_rows, num_steps, dtype=torch.long, device=device)], dim=1)  # (B, L + S)

    out_tokens = torch.full((num_rows, num_steps), pad_token_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((num_rows, num_steps), dtype=torch.float32, device=device)
    rows = torch.arange(num_rows, device=device)  # (b,) wave row of each live batch row
    done = torch.zeros(num_rows, dtype=torch.bool, device=device)  # (b,)

    for step in range(num_steps):
        uniform = draw_uniform(temperature, generator, num_rows, device)
        tokens, logprobs = pick_next_tokens(logits, temperature, top_k, top_p,
                                            None if uniform is None else uniform[rows])  # (b,), (b,)
        out_tokens[rows, step] = tokens
        out_logprobs[rows, step] = logprobs
        done |= torch.isin(tokens, eos_ids) | (limits[rows] <= step + 1)
        if step + 1 == num_steps:
            break

        # drop finished rows only every check_every steps: reading `done` is a host sync.
        # Rows that finished in between decode a few throw-away tokens; they are cut below.
        if (step + 1) % check_every == 0:
            live = (~done).nonzero().squeeze(-1)  # (b',)
            if live.numel() == 0:
                break
            if live.numel() < rows.numel():
                cache.batch_select_indices(live)
                rows, done, tokens, mask = rows[live], done[live], tokens[live], mask[live]

        # (b, 1): the new token's position in its own row (clamped: rows past their limit are thrown away)
        position = (lengths[rows] + step).clamp(max=context_len - 1).unsqueeze(-1)
        logits = last_logits(model, cache, cache_kwarg, keep_arg, tokens.unsqueeze(-1),
                             mask[:, : width + step + 1], position)  # (b, V)

    return to_completions(out_tokens, out_logprobs, limits, eos_ids)


def to_completions(out_tokens, out_logprobs, limits, eos_ids) -> list[Completion]:
    eos = set(eos_ids.tolist())  # (B, S) tensors -> one Completion per row
    return [to_completion(t, lp, limit, eos)
            for t, lp, limit in zip(out_tokens.tolist(), out_logprobs.tolist(), limits.tolist())]


def to_completion(tokens: list[int], logprobs: list[float], limit: int, eos: set[int]) -> Completion:
    """Cut at the first EOS; anything after it (or past the row's limit) is throw-away."""
    for i, t in enumerate(tokens[:limit]):
        if t in eos:
            return Completion(tokens[: i + 1], logprobs[: i + 1], "stop")
    return Completion(tokens[:limit], logprobs[:limit], "length")


# ---- fast path: static cache, row buckets, a compiled step ----
# Keys and values of each layer live in one (R, H_kv, S, D) buffer written in place: slot t of a row holds
# token t of its left-padded sequence, as in the eager cache. The model sees a view of the first `rows` rows.
# When compiled, `rows` is a power of two (a bucket): live rows move to the front and the view shrinks only
# when they fit the next bucket, so the step has few shapes and CUDA replays one graph per bucket instead of
# launching ~40 kernels per layer from Python. Uncompiled, finished rows leave at every check, as in eager.

class RowsLayer(StaticLayer):
    """A transformers StaticLayer over buffers we own, so that every bucket is a view of one allocation."""

    def __init__(self, keys, values):
        super().__init__(max_cache_len=keys.size(2))
        # the next slot to write, advanced in place by StaticLayer.update; mutated inside the graph, so static
        self.cumulative_length = torch.zeros((), dtype=torch.long, device=keys.device)
        torch._dynamo.mark_static_address(self.cumulative_length)
        self.is_initialized, self.device, self.dtype = True, keys.device, keys.dtype
        self.num_heads, self.k_head_dim, self.v_head_dim = keys.size(1), keys.size(3), values.size(3)
        self.buffers = keys, values  # (R, H_kv, S, D) each
        self.view(keys.size(0))

    def view(self, rows: int, slots: int | None = None) -> None:
        """Show the model the first `rows` rows, and the first `slots` slots (all by default)."""
        self.keys, self.values = self.buffers[0][:rows, :, :slots], self.buffers[1][:rows, :, :slots]  # no copy
        self.batch_size = rows
        torch._dynamo.mark_static_address(self.keys)  # CUDA graphs read and write the cache in place
        torch._dynamo.mark_static_address(self.values)

    def get_mask_sizes(self, *args, **kwargs):
        return self.keys.size(2), 0  # a tensor size, not the int max_cache_len: a new length does not recompile


class FastState:
    """One model's static cache and decode step (compiled or not); `slot` is the next slot to write.
    buckets: pad rows to powers of two (>= 8), so a compiled step sees few shapes; else exactly the live rows."""

    def __init__(self, step_fn, buckets: bool):
        self.cache, self.step_fn, self.buckets, self.rows, self.slot, self.shown = None, step_fn, buckets, 0, 0, None

    def rows_for(self, live: int) -> int:
        return max(8, 1 << (live - 1).bit_length()) if self.buckets else live

    def load(self, prefill_cache: DynamicCache, n: int, rows: int, length: int) -> None:
        """Copy each prefilled prompt into n consecutive rows. Reuse the buffers when they fit and are not much
        longer (graphs replay at fixed addresses), else allocate R = rows, S = length rounded up to 128."""
        prefilled = [(layer.keys, layer.values) for layer in prefill_cache.layers]  # (U, H_kv, L, D) each
        have = self.cache.layers[0].buffers[0].shape if self.cache is not None else None
        if have is None or have[0] < rows or not length <= have[2] <= length + max(128, length // 4):
            self.cache = None  # free the old buffers first
            size = -(-length // 128) * 128
            self.cache = Cache(layers=[RowsLayer(k.new_zeros(rows, k.size(1), size, k.size(3)),
                                                 v.new_zeros(rows, v.size(1), size, v.size(3)))
                                       for k, v in prefilled])
        units, width = prefilled[0][0].shape[0], prefilled[0][0].shape[2]
        for layer, kv in zip(self.cache.layers, prefilled):
            for buffer, src in zip(layer.buffers, kv):
                # (U, n, H_kv, L, D) view of the first U * n rows; broadcasting copies without an n-fold temporary
                buffer[: units * n].unflatten(0, (units, n))[..., :width, :] = src.unsqueeze(1)
        self.rows, self.shown = rows, None
        self.set_slot(width)

    def view(self, rows: int, slots: int | None) -> None:
        if self.shown != (rows, slots):  # new views only when the shape changes: fewer dynamo guard checks
            for layer in self.cache.layers:
                layer.view(rows, slots)
            self.shown = rows, slots

    def set_slot(self, slot: int) -> None:
        self.slot = slot
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(slot)

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Row i of the new, smaller bucket becomes row keep[i] of the current one (written slots only)."""
        for layer in self.cache.layers:
            for buffer in layer.buffers:
                buffer[: keep.numel(), :, : self.slot] = buffer[keep, :, : self.slot]
        self.rows, self.shown = keep.numel(), None

    def step(self, model, cache_kwarg, tokens, mask, *args):
        """decode_step for the `rows` rows. Compiled, it sees every slot (fixed shapes; the causal mask hides
        unwritten ones); uncompiled, only the slots written so far, like the eager cache. Compile errors surface
        at the first call of a new shape: then warn and go on uncompiled, for this model from now on."""
        if self.step_fn is not None:
            try:
                self.view(self.rows, None)
                if tokens.is_cuda:
                    torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs have been consumed
                tokens, logprobs = self.step_fn(model, self.cache, cache_kwarg, tokens, mask, *args)
                self.slot += 1
                return tokens.clone(), logprobs.clone()  # graph outputs are overwritten by the next replay
            except Exception as error:  # noqa: BLE001 -- any compile failure; a genuine error recurs below
                warnings.warn(f"sampler: torch.compile failed, decoding uncompiled: {type(error).__name__}: {error}")
                self.step_fn = None
                self.set_slot(self.slot)  # a partly run step may have advanced some layers' counters
        self.slot += 1
        self.view(self.rows, self.slot)  # slots 0 .. the one this step writes
        return decode_step(model, self.cache, cache_kwarg, tokens, mask[:, : self.slot], *args)


def decode_step(model, cache, cache_kwarg, tokens, mask, position, uniform, temperature, top_k, top_p):
    """Feed one token per row: tokens (r,), mask (r, S), position (r,) -> next tokens (r,), logprobs (r,)."""
    out = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=position.unsqueeze(-1),
                use_cache=True, **{cache_kwarg: cache})
    return pick_next_tokens(out.logits[:, -1], temperature, top_k, top_p, uniform)


def decode_wave_fast(model, state, prompts, n, max_new_tokens, temperature, top_k, top_p, eos_ids, pad_token_id,
                     context_len, generator, check_every) -> list[Completion]:
    device, cache_kwarg = next(model.parameters()).device, cache_kwarg_name(model)
    prefill_cache, logits, prompt_mask = prefill(model, prompts, pad_token_id, device)  # _, (U, V), (U, L)
    lengths, limits = row_limits(prompts, n, max_new_tokens, context_len, device)  # (B,), (B,)
    num_rows, width, num_steps = lengths.numel(), prompt_mask.size(1), int(limits.max())
    rows = state.rows_for(num_rows)
    state.load(prefill_cache, n, rows, width + num_steps)
    del prefill_cache

    # batch row i holds wave row index[i]; rows from `live` on pad the bucket (copies of a row, never recorded)
    index = torch.arange(rows, device=device).clamp(max=num_rows - 1)  # (r,)
    live = num_rows
    done = torch.arange(rows, device=device) >= live  # (r,)
    # slots after the prompt hold real tokens; the causal mask hides those not written yet
    mask = torch.ones(rows, state.cache.layers[0].buffers[0].size(2), dtype=torch.long, device=device)  # (r, S)
    mask[:, :width] = prompt_mask[index // n]

    out_tokens = torch.full((num_rows, num_steps), pad_token_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((num_rows, num_steps), dtype=torch.float32, device=device)
    uniform = draw_uniform(temperature, generator, num_rows, device)
    tokens, logprobs = pick_next_tokens(logits[index // n], temperature, top_k, top_p,
                                        None if uniform is None else uniform[index])  # (r,), (r,)
    tokens = tokens.clone()  # not a view, like the tokens of later steps (dynamo guards on that)
    for step in range(num_steps):
        out_tokens[index[:live], step] = tokens[:live]
        out_logprobs[index[:live], step] = logprobs[:live]
        done |= torch.isin(tokens, eos_ids) | (limits[index] <= step + 1)
        if step + 1 == num_steps:
            break

        # every check_every steps (a host sync), live rows move down a bucket when they fit a smaller one.
        # Finished rows keep decoding until then; their throw-away tokens are cut below.
        if (step + 1) % check_every == 0:
            alive = (~done).nonzero().squeeze(-1)  # (b',)
            if alive.numel() == 0:
                break
            if state.rows_for(alive.numel()) < rows:
                live, rows = alive.numel(), state.rows_for(alive.numel())
                keep = torch.cat([alive, alive[:1].expand(rows - live)])  # (r',)
                state.keep_rows(keep)
                index, tokens, mask = index[keep], tokens[keep], mask[keep]
                done = torch.arange(rows, device=device) >= live

        uniform = draw_uniform(temperature, generator, num_rows, device)
        # feed token `step` at its position (clamped as in the eager loop), pick token step + 1
        position = (lengths[index] + step).clamp(max=context_len - 1)  # (r,)
        tokens, logprobs = state.step(model, cache_kwarg, tokens, mask, position,
                                      None if uniform is None else uniform[index], temperature, top_k, top_p)

    return to_completions(out_tokens, out_logprobs, limits, eos_ids)


# ---- attention for one query token ----

def gqa_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA, except for one query token and grouped key/value heads: the G query heads of a
    key/value head become G query rows, (r, H_kv, G, D), so the cache is read in place instead of first
    being copied G times (what transformers 5.17 does whenever there is a mask, i.e. every padded step)."""
    groups = getattr(module, "num_key_value_groups", 1)
    if query.size(2) != 1 or groups == 1 or kwargs.get("s_aux") is not None or kwargs.get("softcap"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    r, heads, _, dim = query.shape  # (r, H, 1, D)
    out = F.scaled_dot_product_attention(query.view(r, heads // groups, groups, dim), key, value,
                                         attn_mask=attention_mask, scale=scaling)  # (r, H_kv, G, D)
    return out.reshape(r, 1, heads, dim), None  # head h reads kv head h // G, as in repeat_kv


AttentionInterface.register("sampler_sdpa", gqa_decode_attention)
AttentionMaskInterface.register("sampler_sdpa", sdpa_mask)


@contextlib.contextmanager
def decode_attention(model):
    """Route an SDPA model's attention through gqa_decode_attention while the fast loop runs."""
    config = model.config
    if config._attn_implementation != "sdpa":
        yield
        return
    config._attn_implementation = "sampler_sdpa"
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


# ---- choosing the loop ----

FAST_STATES = weakref.WeakKeyDictionary()  # model -> FastState, kept while the model lives when compiled
COMPILED_STEP = None  # torch.compile(decode_step), made on first use


def static_cache_supported(model) -> bool:
    """Plain full-attention layers only: sliding-window, linear-attention or encoder-decoder caches go eager."""
    try:
        layers = StaticCache(config=model.config, max_cache_len=1).layers
    except Exception:  # noqa: BLE001 -- any config StaticCache cannot take
        return False
    return len(layers) > 0 and all(type(layer) is StaticLayer for layer in layers)


def is_fsdp(model) -> bool:
    return any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules())


def fast_state(model, fast, device) -> FastState | None:
    """The fast loop's state for this model, or None for the eager loop (see the module docstring)."""
    if fast is False or (fast is None and device.type != "cuda"):
        return None
    if not static_cache_supported(model):
        warnings.warn(f"sampler: {type(model).__name__} has no plain static cache; using the eager decode loop")
        return None
    if not (fast == "compile" or (fast in (True, None) and device.type == "cuda" and not is_fsdp(model))):
        return FastState(None, buckets=False)  # uncompiled: any shape is fine; fresh buffers, freed after the call
    global COMPILED_STEP
    if COMPILED_STEP is None:
        # dynamic shapes: one compile serves every bucket and cache length (CUDA graphs are still per shape)
        COMPILED_STEP = torch.compile(decode_step, mode="reduce-overhead", dynamic=True)
        # else the first bucket's size, equal to the buffers' row count, gets one symbol: a recompile later
        fx_config.use_duck_shape = False
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))  # models x settings
    if model not in FAST_STATES:
        FAST_STATES[model] = FastState(COMPILED_STEP, buckets=True)
    return FAST_STATES[model]


# ---- public entry point ----

@torch.no_grad()  # not inference_mode: this runs between training steps on the live (maybe FSDP2) model,
# and inference tensors created here could not be used by autograd afterwards
def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, eos_token_id: int | list[int] | None = None,
             pad_token_id: int = 0, seed: int | None = None, n: int = 1,
             generator: torch.Generator | None = None, max_tokens_in_flight: int | None = None,
             context_len: int | None = None, check_every: int | None = None,
             fast: bool | str | None = None) -> list[Completion]:
    """Sample n completions per prompt. Returns len(prompts) * n Completions, prompt-major:
    the samples of prompt i are at [i * n:(i + 1) * n]. temperature 0 is greedy. `generator`, if given,
    is used instead of a new one seeded with `seed`; with neither, torch's global RNG is used.
    max_tokens_in_flight caps rows * (longest prompt + max_new_tokens) per wave; context_len defaults to
    config.max_position_embeddings. check_every: steps between drops of finished rows; each check is a
    device->host sync, so the default is 16 on accelerators and 1 on CPU, where reading a flag is free.
    fast: None = the fast loop on CUDA, eager elsewhere; True = fast loop (compiled on CUDA unless
    FSDP-wrapped); "static" = fast loop, never compiled; "compile" = fast loop, compiled on any device;
    False = the eager loop. All give the same samples."""
    if context_len is None:
        context_len = model.config.max_position_embeddings
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if len(p) + 1 > context_len:
            raise ValueError(f"prompt {i} has {len(p)} tokens; with at least 1 new token it exceeds "
                             f"context_len={context_len}")
    if max_new_tokens <= 0:
        return [Completion([], [], "length") for _ in range(len(prompts) * n)]

    device = next(model.parameters()).device
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 16
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    eos_list = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eos_ids = torch.tensor(eos_list, dtype=torch.long, device=device)

    state = fast_state(model, fast, device)
    results = []
    with decode_attention(model) if state is not None else contextlib.nullcontext():
        for wave in plan_waves([len(p) for p in prompts], n, max_new_tokens, max_tokens_in_flight):
            args = ([prompts[i] for i in wave], n, max_new_tokens, temperature, top_k, top_p, eos_ids, pad_token_id,
                    context_len, generator, check_every)
            results += decode_wave(model, *args) if state is None else decode_wave_fast(model, state, *args)
    return results
