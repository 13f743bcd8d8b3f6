"""Tests for sampler.py: greedy parity with model.generate, logprobs vs a full forward, seeding,
top-k/top-p filters, shared prefill, compaction interval, waves, context checks; the fast loop (static
cache, exact rows or power-of-two buckets, compiled step) against the eager one and model.generate.
Tiny random models, CPU; the CUDA tests skip without a GPU."""
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest
import torch
import transformers

import sampler
from infra import fastdecode
from sampler import generate, plan_waves, sample_from_logits, top_k_filter, top_p_filter

VOCAB = 96


# ---- helpers ----

def tiny_model(arch="qwen3", seed=0, dtype=torch.float32, device="cpu"):
    # initializer_range 0.2 (not 0.02) makes random logits peaked, so greedy never rides a near-tie
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                  initializer_range=0.2, eos_token_id=None, bos_token_id=None, pad_token_id=None)
    config = transformers.Qwen3Config(**common) if arch == "qwen3" else transformers.LlamaConfig(**common)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model


def ragged_prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


LENGTHS = [3, 11, 6, 1, 15, 8]


def hf_greedy(model, prompt, max_new_tokens, eos=None):
    """model.generate on the prompt alone (no padding): the reference a padded row must reproduce."""
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=eos, pad_token_id=0 if eos is None else eos)
    return out[0, len(prompt):].tolist()


def pick_eos(references):
    """A token that greedy emits (not first) in some rows but never in others, so that both
    finish reasons occur."""
    for tok in range(VOCAB):
        hit = [tok in r[1:] and tok != r[0] for r in references]
        missing = [tok not in r for r in references]
        if any(hit) and any(missing):
            return tok
    raise AssertionError("no token separates the rows; change the seed")


def full_forward_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion], device=model.device)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()  # (C, V)
    lp = (logits / temperature).log_softmax(-1)
    return lp.gather(-1, torch.tensor(completion, device=model.device)[:, None]).squeeze(-1).cpu()


# ---- greedy parity with model.generate ----

@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_greedy_matches_hf_generate_ragged(arch):
    model, prompts = tiny_model(arch), ragged_prompts(LENGTHS)
    refs = [hf_greedy(model, p, 24) for p in prompts]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. the past_key_values deprecation of transformers 5.2x
        ours = generate(model, prompts, 24, temperature=0)
    assert [c.tokens for c in ours] == refs
    assert all(c.finish_reason == "length" for c in ours)

    eos = pick_eos(refs)
    unused = next(t for t in range(VOCAB) if all(t not in r for r in refs))
    refs = [hf_greedy(model, p, 24, eos=eos) for p in prompts]
    # pad == EOS on purpose: masks must come from lengths; a second, unused stop id exercises lists
    ours = generate(model, prompts, 24, temperature=0, eos_token_id=[unused, eos],
                    pad_token_id=eos, check_every=3)
    assert [c.tokens for c in ours] == refs
    reasons = {c.finish_reason for c in ours}
    assert reasons == {"stop", "length"}, reasons
    for c in ours:
        assert len(c.logprobs) == len(c.tokens)
        assert (c.tokens[-1] == eos) == (c.finish_reason == "stop")


# ---- logprobs ----

def test_logprobs_match_full_forward_when_sampling():
    model, prompts = tiny_model(), ragged_prompts(LENGTHS, seed=1)
    outs = generate(model, prompts, 16, temperature=0.7, top_p=0.9, top_k=20, n=2, seed=0,
                    eos_token_id=5, check_every=4)
    for i, c in enumerate(outs):
        expected = full_forward_logprobs(model, prompts[i // 2], c.tokens, 0.7)
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def test_greedy_logprobs_are_temperature_one():
    model, prompts = tiny_model(), ragged_prompts(LENGTHS[:3])
    for prompt, c in zip(prompts, generate(model, prompts, 8, temperature=0)):
        expected = full_forward_logprobs(model, prompt, c.tokens, 1.0)
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


# ---- seeding and filters ----

def test_seed_repeats_and_generator_equals_seed():
    model, prompts = tiny_model(), ragged_prompts(LENGTHS)
    a = generate(model, prompts, 12, temperature=1.0, seed=3)
    b = generate(model, prompts, 12, temperature=1.0, seed=3)
    c = generate(model, prompts, 12, temperature=1.0, generator=torch.Generator().manual_seed(3))
    d = generate(model, prompts, 12, temperature=1.0, seed=4)
    assert a == b == c
    assert [x.tokens for x in a] != [x.tokens for x in d]


def test_top_k_1_equals_greedy():
    model, prompts = tiny_model(), ragged_prompts(LENGTHS)
    greedy = generate(model, prompts, 12, temperature=0)
    top1 = generate(model, prompts, 12, temperature=1.0, top_k=1, seed=0)
    assert [c.tokens for c in top1] == [c.tokens for c in greedy]
    for g, t in zip(greedy, top1):  # both at temperature 1, untruncated
        torch.testing.assert_close(torch.tensor(t.logprobs), torch.tensor(g.logprobs))


def kept(logits):
    return torch.isfinite(logits).nonzero().squeeze(-1).tolist()


def test_top_p_filter_keeps_smallest_set_reaching_p():
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()[None]  # sorted: 0.5, 0.3, 0.15, 0.05
    assert kept(top_p_filter(logits, 0.3)[0]) == [1]            # 0.5 alone reaches 0.3
    assert kept(top_p_filter(logits, 0.6)[0]) == [1, 3]         # 0.5 + 0.3
    assert kept(top_p_filter(logits, 0.85)[0]) == [1, 2, 3]     # 0.5 + 0.3 + 0.15
    assert kept(top_p_filter(logits, 0.97)[0]) == [0, 1, 2, 3]
    assert kept(top_p_filter(logits, 1.0)[0]) == [0, 1, 2, 3]
    assert kept(top_p_filter(logits, 0.0)[0]) == [1]            # the top token always stays
    kept_values = top_p_filter(logits, 0.6)[0]
    assert torch.equal(kept_values[[1, 3]], logits[0, [1, 3]])  # survivors are unchanged


def test_top_k_filter():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
    assert [kept(r) for r in top_k_filter(logits, 2)] == [[1, 3], [0, 1]]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_inverse_cdf_sampling_follows_probabilities():
    logits = torch.tensor([0.1, 0.2, 0.7]).log()[None].repeat(4, 1)
    u = torch.tensor([0.05, 0.15, 0.31, 0.95])
    assert sample_from_logits(logits, u).tolist() == [0, 1, 2, 2]
    g = torch.Generator().manual_seed(0)
    draws = sample_from_logits(logits[:1].expand(20000, 3), torch.rand(20000, generator=g))
    freq = torch.bincount(draws, minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.015, rtol=0)


# ---- shared prefill, compaction, waves ----

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefill_equals_repeated_prompts(temperature):
    model, prompts = tiny_model(), ragged_prompts(LENGTHS[:4])
    shared = generate(model, prompts, 12, temperature=temperature, n=3, seed=0, eos_token_id=7)
    repeated = generate(model, [p for p in prompts for _ in range(3)], 12, temperature=temperature, seed=0,
                        eos_token_id=7)
    assert len(shared) == 12
    assert [c.tokens for c in shared] == [c.tokens for c in repeated]
    for s, r in zip(shared, repeated):
        torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(r.logprobs), atol=1e-5, rtol=0)


def test_check_interval_does_not_change_samples():
    model, prompts = tiny_model(seed=2), ragged_prompts(LENGTHS, seed=2)
    eos = pick_eos([c.tokens for c in generate(model, prompts, 20, temperature=1.0, seed=5)])
    runs = [generate(model, prompts, 20, temperature=1.0, top_p=0.95, seed=5, n=2, eos_token_id=eos,
                     check_every=k) for k in (1, 16, 1000)]
    assert {c.finish_reason for c in runs[0]} == {"stop", "length"}
    for other in runs[1:]:
        assert [c.tokens for c in other] == [c.tokens for c in runs[0]]
        for a, b in zip(other, runs[0]):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_plan_waves_never_drops_prompts():
    assert plan_waves([3, 4, 5], 2, 10, None) == [[0, 1, 2]]
    # 2 rows * (4 + 10) = 28 fits 30; adding a prompt makes 4 * 14 = 56
    assert plan_waves([3, 4, 5], 2, 10, 30) == [[0], [1], [2]]
    assert plan_waves([3, 4, 5], 1, 10, 30) == [[0, 1], [2]]
    assert plan_waves([50, 2], 1, 10, 30) == [[0], [1]]  # over the cap alone: own wave, not dropped


def test_max_tokens_in_flight_gives_same_greedy_results():
    model, prompts = tiny_model(), ragged_prompts(LENGTHS)
    assert len(plan_waves(LENGTHS, 2, 10, 60)) > 2
    whole = generate(model, prompts, 10, temperature=0, n=2, eos_token_id=7)
    waves = generate(model, prompts, 10, temperature=0, n=2, eos_token_id=7, max_tokens_in_flight=60)
    assert [c.tokens for c in waves] == [c.tokens for c in whole]


def test_context_len_limits_and_errors():
    model = tiny_model()
    prompts = ragged_prompts([4, 16, 12])
    with pytest.raises(ValueError, match=r"prompt 1 has 16 tokens.*context_len=16"):
        generate(model, prompts, 4, temperature=0, context_len=16)
    outs = generate(model, [prompts[0], prompts[2]], 10, temperature=0, context_len=16)
    assert [len(c.tokens) for c in outs] == [10, 4]  # the 12-token prompt may only grow to 16
    assert [c.finish_reason for c in outs] == ["length", "length"]
    assert outs[1].tokens == hf_greedy(model, prompts[2], 4)
    with pytest.raises(ValueError, match="prompt 0"):
        generate(model, [[1] * 200], 4)  # default: config.max_position_embeddings (128)


# ---- the fast loop (static cache, row buckets) against the eager loop and model.generate ----

def assert_same(fast, eager, atol=1e-4):
    assert [c.tokens for c in fast] == [c.tokens for c in eager]
    assert [c.finish_reason for c in fast] == [c.finish_reason for c in eager]
    for f, e in zip(fast, eager):
        torch.testing.assert_close(torch.tensor(f.logprobs), torch.tensor(e.logprobs), atol=atol, rtol=0)


@pytest.fixture(params=["exact rows", "buckets"])
def rows_policy(request, monkeypatch):
    """Uncompiled, the fast loop drops finished rows exactly and attends over written slots; compiled (CUDA),
    it pads rows to power-of-two buckets and attends over every slot. Test both on CPU, the second with the
    step function not compiled (test_fast_compiled_step_matches_eager compiles it)."""
    if request.param == "buckets":
        monkeypatch.setattr(fastdecode, "fast_state", lambda model, fast, device: None if fast is False else
                            fastdecode.FastState(fastdecode.decode_step, buckets=True))
    return request.param


def count_compactions(monkeypatch):
    """Count the fast path's moves to a smaller bucket, so a test can show it exercised them."""
    calls = []
    original = fastdecode.FastState.keep_rows
    monkeypatch.setattr(fastdecode.FastState, "keep_rows", lambda self, keep: (calls.append(keep.numel()),
                                                                            original(self, keep)))
    return calls


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_fast_greedy_matches_hf_generate(arch, rows_policy, monkeypatch):
    model, prompts = tiny_model(arch), ragged_prompts(LENGTHS * 2, seed=4)  # 12 rows: bucket 16 -> 8
    greedy = [c.tokens for c in generate(model, prompts, 24, temperature=0, fast=False)]
    # the token that stops the most rows (but not all): at least 5 of 12 must stop to leave bucket 16
    stops = {t: sum(t in r for r in greedy) for t in range(VOCAB) if any(t not in r for r in greedy)}
    eos = max(stops, key=stops.get)
    assert stops[eos] >= 5
    unused = next(t for t in range(VOCAB) if all(t not in r for r in greedy))
    refs = [hf_greedy(model, p, 24, eos=eos) for p in prompts]
    compactions = count_compactions(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = generate(model, prompts, 24, temperature=0, eos_token_id=[unused, eos], pad_token_id=eos,
                        check_every=3, fast=True)
    assert [c.tokens for c in fast] == refs
    assert {c.finish_reason for c in fast} == {"stop", "length"}
    assert compactions, "no row left its bucket: the test does not exercise compaction"
    eager = generate(model, prompts, 24, temperature=0, eos_token_id=[unused, eos], pad_token_id=eos,
                     check_every=3, fast=False)
    assert_same(fast, eager)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_fast_sampling_matches_eager(arch, rows_policy, monkeypatch):
    model, prompts = tiny_model(arch, seed=3), ragged_prompts(LENGTHS, seed=3)
    kwargs = dict(temperature=0.8, top_p=0.95, top_k=40, n=4, check_every=2, eos_token_id=[3, 7, 11, 19])
    eager = generate(model, prompts, 30, seed=1, **kwargs, fast=False)
    compactions = count_compactions(monkeypatch)
    fast = generate(model, prompts, 30, seed=1, **kwargs, fast=True)
    assert_same(fast, eager)
    assert {c.finish_reason for c in fast} == {"stop", "length"}
    assert compactions
    # waves share the generator: each wave must draw exactly as many uniforms as the eager loop
    waves = dict(max_tokens_in_flight=300, generator=torch.Generator().manual_seed(2))
    assert len(plan_waves(LENGTHS, 4, 30, 300)) > 2
    eager = generate(model, prompts, 30, **kwargs, **waves, fast=False)
    waves["generator"].manual_seed(2)
    assert_same(generate(model, prompts, 30, **kwargs, **waves, fast=True), eager)


def test_fast_falls_back_to_eager_for_sliding_window():
    config = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      use_sliding_window=True, sliding_window=8, max_window_layers=1)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    prompts = ragged_prompts(LENGTHS[:3])
    with pytest.warns(UserWarning, match="eager decode loop"):
        fast = generate(model, prompts, 8, temperature=0, fast=True)
    assert_same(fast, generate(model, prompts, 8, temperature=0, fast=False), atol=0)


def test_fast_compiled_step_matches_eager():
    """The compiled decode step (what CUDA runs, minus the graphs) on CPU: slow to compile, so one short run."""
    model, prompts = tiny_model(), ragged_prompts(LENGTHS, seed=5)
    kwargs = dict(temperature=1.0, n=2, check_every=2, eos_token_id=[3, 7])
    eager = generate(model, prompts, 12, seed=0, **kwargs, fast=False)
    assert_same(generate(model, prompts, 12, seed=0, **kwargs, fast="compile"), eager)
    assert fastdecode.FAST_STATES[model].step_fn is not None, "compilation failed and fell back"


# ---- GPU ----

def check_bf16_greedy(device):
    model = tiny_model(dtype=torch.bfloat16, device=device)
    prompts = ragged_prompts(LENGTHS)
    outs = generate(model, prompts, 16, temperature=0)
    same_start = 0
    for prompt, c in zip(prompts, outs):
        same_start += c.tokens[:3] == hf_greedy(model, prompt, 3)
        ids = torch.tensor([prompt + c.tokens], device=device)
        with torch.no_grad():
            full = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1).cpu()  # (C, V)
        chosen = full.gather(-1, torch.tensor(c.tokens)[:, None]).squeeze(-1)
        # bf16 padding noise may flip near-ties, so: every pick is (nearly) the argmax of a full forward
        assert (full.max(-1).values - chosen).max() < 0.1
        torch.testing.assert_close(torch.tensor(c.logprobs), chosen, atol=0.1, rtol=0)
    assert same_start >= len(prompts) - 1


def test_bf16_greedy_cpu():
    check_bf16_greedy("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_greedy_cuda():
    check_bf16_greedy("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fast", ["static", True])
def test_fast_cuda_matches_eager(fast):
    """fp32 on CUDA: the static cache, and the compiled step with CUDA graphs (fast=True), against eager."""
    model, prompts = tiny_model(device="cuda"), ragged_prompts(LENGTHS * 3, seed=6)
    kwargs = dict(temperature=1.0, top_p=0.95, n=2, check_every=4, eos_token_id=[3, 7])
    eager = generate(model, prompts, 40, seed=0, **kwargs, fast=False)
    for _ in range(2):  # the second call replays the recorded graphs
        assert_same(generate(model, prompts, 40, seed=0, **kwargs, fast=fast), eager)
    if fast is True:
        assert fastdecode.FAST_STATES[model].step_fn is not None, "compilation failed and fell back"


def test_kept_fast_state_follows_a_cast_model(monkeypatch):
    """The compiled loop keeps its cache buffers with the model; a model cast to bf16 since the last call gets new
    buffers (found by the GPU script's dry run: index_copy_ of bf16 keys into fp32 buffers)."""
    model, prompts = tiny_model("qwen3"), ragged_prompts(LENGTHS, seed=7)
    state = fastdecode.FastState(fastdecode.decode_step, buckets=True)  # one state across calls, as compiled
    monkeypatch.setattr(fastdecode, "fast_state", lambda model, fast, device: state)
    generate(model, prompts, 6, temperature=0, fast=True)
    model.to(torch.bfloat16)
    out = generate(model, prompts, 6, temperature=0, fast=True)
    assert len(out) == len(prompts) and state.cache.layers[0].buffers[0].dtype == torch.bfloat16
