"""infra/fastdecode.py -- the sampler's fast path: a KV cache allocated once and written in place, rows padded
to power-of-two buckets, and on CUDA a compiled one-token step (torch.compile "reduce-overhead": CUDA graphs).

sampler.py is the reference (transformers' DynamicCache, the batch reshaped at every drop) and does the
wave's set-up for both loops (prefill, row limits, output buffers, the uniform draws); this loop takes the
prefilled wave and gives the same samples (tests/test_sampler.py holds it to the eager loop, and to
model.generate). The token choice itself is sampler.pick_next_tokens, passed in, so there is one copy of it.

Why apart (skip on first read): it is a speed path, worth 3-7x on a GPU (docs/sampler.md) and none
of the algorithm. FSDP-wrapped models are not compiled (FSDP hooks and re-gathered weights do not belong in
a graph); models whose cache cannot be static (sliding windows, ...) warn once and run the eager loop.
"""
import contextlib
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from torch.fx.experimental import _config as fx_config
from transformers import AttentionInterface, AttentionMaskInterface, Cache, DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

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
        old = self.cache.layers[0].buffers[0] if self.cache is not None else None
        have = old.shape if old is not None else None
        # a model cast to another dtype (or moved) since the last call needs new buffers, not an index_copy_ error
        if have is None or old.dtype != prefilled[0][0].dtype or old.device != prefilled[0][0].device \
                or have[0] < rows or not length <= have[2] <= length + max(128, length // 4):
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


def decode_step(model, cache, cache_kwarg, tokens, mask, position, uniform, temperature, top_k, top_p, pick):
    """Feed one token per row: tokens (r,), mask (r, S), position (r,) -> next tokens (r,), logprobs (r,).
    pick is sampler.pick_next_tokens (an argument, so this module imports nothing of the sampler's)."""
    out = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=position.unsqueeze(-1),
                use_cache=True, **{cache_kwarg: cache})
    return pick(out.logits[:, -1], temperature, top_k, top_p, uniform)


def decode_wave_fast(model, state, wave, d, cache_kwarg, pick, draw_uniform):
    """The fast loop over a prefilled wave (sampler.Wave; d: sampler.Decode) -> wave.out_tokens/out_logprobs
    filled. Same steps as sampler.decode_wave; what differs is where the cache lives and how rows leave."""
    device, n, num_rows, num_steps, width = wave.lengths.device, d.n, wave.num_rows, wave.num_steps, wave.width
    rows = state.rows_for(num_rows)
    state.load(wave.cache, n, rows, width + num_steps)
    wave.cache = None  # the prefill's DynamicCache is copied into the static buffers: free it

    # batch row i holds wave row index[i]; rows from `live` on pad the bucket (copies of a row, never recorded)
    index = torch.arange(rows, device=device).clamp(max=num_rows - 1)  # (r,)
    live = num_rows
    done = torch.arange(rows, device=device) >= live  # (r,)
    # slots after the prompt hold real tokens; the causal mask hides those not written yet
    mask = torch.ones(rows, state.cache.layers[0].buffers[0].size(2), dtype=torch.long, device=device)  # (r, S)
    mask[:, :width] = wave.prompt_mask[index // n]

    uniform = draw_uniform(d.temperature, d.generator, num_rows, device)
    tokens, logprobs = pick(wave.logits[index // n], d.temperature, d.top_k, d.top_p,
                            None if uniform is None else uniform[index])  # (r,), (r,)
    tokens = tokens.clone()  # not a view, like the tokens of later steps (dynamo guards on that)
    for step in range(num_steps):
        wave.out_tokens[index[:live], step] = tokens[:live]
        wave.out_logprobs[index[:live], step] = logprobs[:live]
        done |= torch.isin(tokens, d.eos_ids) | (wave.limits[index] <= step + 1)
        if step + 1 == num_steps:
            break

        # every check_every steps (a host sync), live rows move down a bucket when they fit a smaller one.
        # Finished rows keep decoding until then; their throw-away tokens are cut by the caller.
        if (step + 1) % d.check_every == 0:
            alive = (~done).nonzero().squeeze(-1)  # (b',)
            if alive.numel() == 0:
                break
            if state.rows_for(alive.numel()) < rows:
                live, rows = alive.numel(), state.rows_for(alive.numel())
                keep = torch.cat([alive, alive[:1].expand(rows - live)])  # (r',)
                state.keep_rows(keep)
                index, tokens, mask = index[keep], tokens[keep], mask[keep]
                done = torch.arange(rows, device=device) >= live

        uniform = draw_uniform(d.temperature, d.generator, num_rows, device)
        # feed token `step` at its position (clamped as in the eager loop), pick token step + 1
        position = (wave.lengths[index] + step).clamp(max=d.context_len - 1)  # (r,)
        tokens, logprobs = state.step(model, cache_kwarg, tokens, mask, position,
                                      None if uniform is None else uniform[index], d.temperature, d.top_k, d.top_p,
                                      pick)


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
    """The fast loop's state for this model (fast: True, None on CUDA, "static" or "compile"; sampler.generate
    chose the fast loop), or None for the eager loop when the model's cache cannot be static."""
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
