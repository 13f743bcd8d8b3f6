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
  fast   fast=True: infra/fastdecode.py, a KV cache allocated once and written in place. On CUDA the
         one-token step is compiled (torch.compile "reduce-overhead", i.e. CUDA graphs), and rows are padded
         to power-of-two buckets so that it sees few shapes. FSDP-wrapped models are not compiled;
         fast="static" never compiles, fast="compile" compiles on CPU too. The compiled loop keeps its cache
         buffers with the model between calls (`fastdecode.FAST_STATES.pop(model)` frees them).
         Models whose cache cannot be static (sliding windows, ...) warn and run eager.
Both loops start from the same prefilled wave (start_wave) and pick tokens with the same pick_next_tokens.
  fast=None (the default) is fast on CUDA and eager elsewhere (docs/sampler.md says why).

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
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from infra import fastdecode

# the default memory cap of a decode (train.py and genrm.py --max-tokens-in-flight): rows x (prompt + new tokens)
# at once, so the KV cache of a long batch never grows unbounded (figures: docs/memory.md)
TOKENS_IN_FLIGHT = 16384


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


def eos_ids(tokenizer, model) -> list[int]:
    """Every id that ends a rollout: the tokenizer's EOS and the model's generation_config EOS ids."""
    gen = getattr(model.generation_config, "eos_token_id", None) if model.generation_config else None
    return sorted({tokenizer.eos_token_id} | set(gen if isinstance(gen, list) else [gen]) - {None})


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


# ---- one wave: what both decode loops start from ----

@dataclass
class Decode:
    """The decoding settings every loop reads (one object instead of a dozen positional arguments)."""
    n: int                   # samples per prompt (rows of a prompt share its prefill)
    max_new_tokens: int
    temperature: float       # 0: greedy
    top_k: int
    top_p: float
    eos_ids: torch.Tensor    # (E,) every id that ends a row
    pad_token_id: int        # fills unused slots; masks never compare ids to it
    context_len: int
    generator: torch.Generator | None
    check_every: int         # steps between drops of finished rows (a host sync each)


@dataclass
class Wave:
    """A prefilled wave of B = U * n rows (prompt-major) and the buffers its tokens are written to."""
    cache: DynamicCache        # the U prompts' KV cache (not yet repeated n times)
    logits: torch.Tensor       # (U, V) each prompt's last logits
    prompt_mask: torch.Tensor  # (U, L) 1 on real prompt tokens (left-padded)
    lengths: torch.Tensor      # (B,) prompt length of each row
    limits: torch.Tensor       # (B,) new tokens each row may write (never past the context)
    out_tokens: torch.Tensor   # (B, S) written by the loop; S = the longest limit
    out_logprobs: torch.Tensor  # (B, S)

    @property
    def num_rows(self):
        return self.lengths.numel()

    @property
    def width(self):
        return self.prompt_mask.size(1)

    @property
    def num_steps(self):
        return self.out_tokens.size(1)


def prefill(model, prompts, pad_token_id, device):
    """Prefill each distinct prompt once -> DynamicCache, last logits (U, V), prompt mask (U, L)."""
    cache = DynamicCache(config=model.config)  # the config gives sliding-window layers where the model has them
    ids, prompt_mask = left_pad(prompts, pad_token_id, device)  # (U, L)
    position_ids = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (U, L): a padded row sees positions 0..len-1
    logits = last_logits(model, cache, cache_kwarg_name(model), accepts_logits_to_keep(model), ids, prompt_mask,
                         position_ids)
    return cache, logits, prompt_mask


def start_wave(model, prompts, d: Decode) -> Wave:
    """Prefill, row limits and empty output buffers: the set-up both loops share."""
    device = next(model.parameters()).device
    cache, logits, prompt_mask = prefill(model, prompts, d.pad_token_id, device)  # _, (U, V), (U, L)
    lengths = torch.tensor([len(p) for p in prompts for _ in range(d.n)], device=device)  # (B,)
    limits = (d.context_len - lengths).clamp(max=d.max_new_tokens)  # (B,)
    num_steps = int(limits.max())
    out_tokens = torch.full((lengths.numel(), num_steps), d.pad_token_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((lengths.numel(), num_steps), dtype=torch.float32, device=device)
    return Wave(cache, logits, prompt_mask, lengths, limits, out_tokens, out_logprobs)


def draw_uniform(temperature, generator, num_rows, device):
    """One uniform per wave row and step, live or not: the stream does not depend on when rows are dropped."""
    if temperature == 0:
        return None
    draw_device = generator.device if generator is not None else device
    return torch.rand(num_rows, generator=generator, device=draw_device).to(device)  # (B,)


# ---- eager decode loop (the reference) ----

def decode_wave(model, wave: Wave, d: Decode) -> None:
    """Decode a prefilled wave into wave.out_tokens / out_logprobs with transformers' DynamicCache."""
    device, n = wave.lengths.device, d.n
    cache_kwarg, keep_arg = cache_kwarg_name(model), accepts_logits_to_keep(model)
    cache, num_rows, num_steps, width = wave.cache, wave.num_rows, wave.num_steps, wave.width

    # share the prefill across the n samples: repeat cache rows, not prompts
    if n > 1:
        cache.batch_repeat_interleave(n)
    logits = wave.logits.repeat_interleave(n, dim=0)  # (B, V), B = U * n, prompt-major
    # attention mask for prompt + every future token, sliced per step; generated slots are real tokens
    mask = torch.cat([wave.prompt_mask.repeat_interleave(n, dim=0),
                      torch.ones(num_rows, num_steps, dtype=torch.long, device=device)], dim=1)  # (B, L + S)
    rows = torch.arange(num_rows, device=device)  # (b,) wave row of each live batch row
    done = torch.zeros(num_rows, dtype=torch.bool, device=device)  # (b,)

    for step in range(num_steps):
        uniform = draw_uniform(d.temperature, d.generator, num_rows, device)
        tokens, logprobs = pick_next_tokens(logits, d.temperature, d.top_k, d.top_p,
                                            None if uniform is None else uniform[rows])  # (b,), (b,)
        wave.out_tokens[rows, step] = tokens
        wave.out_logprobs[rows, step] = logprobs
        done |= torch.isin(tokens, d.eos_ids) | (wave.limits[rows] <= step + 1)
        if step + 1 == num_steps:
            break

        # drop finished rows only every check_every steps: reading `done` is a host sync.
        # Rows that finished in between decode a few throw-away tokens; they are cut below.
        if (step + 1) % d.check_every == 0:
            live = (~done).nonzero().squeeze(-1)  # (b',)
            if live.numel() == 0:
                break
            if live.numel() < rows.numel():
                cache.batch_select_indices(live)
                rows, done, tokens, mask = rows[live], done[live], tokens[live], mask[live]

        # (b, 1): the new token's position in its own row (clamped: rows past their limit are thrown away)
        position = (wave.lengths[rows] + step).clamp(max=d.context_len - 1).unsqueeze(-1)
        logits = last_logits(model, cache, cache_kwarg, keep_arg, tokens.unsqueeze(-1),
                             mask[:, : width + step + 1], position)  # (b, V)


def to_completions(wave: Wave, eos_ids) -> list[Completion]:
    eos = set(eos_ids.tolist())  # (B, S) tensors -> one Completion per row
    return [to_completion(t, lp, limit, eos) for t, lp, limit in
            zip(wave.out_tokens.tolist(), wave.out_logprobs.tolist(), wave.limits.tolist())]


def to_completion(tokens: list[int], logprobs: list[float], limit: int, eos: set[int]) -> Completion:
    """Cut at the first EOS; anything after it (or past the row's limit) is throw-away."""
    for i, t in enumerate(tokens[:limit]):
        if t in eos:
            return Completion(tokens[: i + 1], logprobs[: i + 1], "stop")
    return Completion(tokens[:limit], logprobs[:limit], "length")


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

    d = Decode(n, max_new_tokens, temperature, top_k, top_p, eos_ids, pad_token_id, context_len, generator,
               check_every)
    eager = fast is False or (fast is None and device.type != "cuda")  # the default: fast on CUDA only
    state = None if eager else fastdecode.fast_state(model, fast, device)
    results = []
    with fastdecode.decode_attention(model) if state is not None else contextlib.nullcontext():
        for part in plan_waves([len(p) for p in prompts], n, max_new_tokens, max_tokens_in_flight):
            wave = start_wave(model, [prompts[i] for i in part], d)
            if state is None:
                decode_wave(model, wave, d)
            else:
                fastdecode.decode_wave_fast(model, state, wave, d, cache_kwarg_name(model), pick_next_tokens,
                                            draw_uniform)
            results += to_completions(wave, eos_ids)
    return results
