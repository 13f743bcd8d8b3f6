"""Hand-worked and edge-case tests for grpo.py (advantages, policy loss, KL, chunked log-probs)."""
import sys, os; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E401,E702
import math
import uuid

import numpy as np
import pytest
import torch

import grpo
import logprobs
from grpo import aggregate, global_normalizer, group_advantages, kl_penalty, masked_mean, policy_loss
from logprobs import token_entropy, token_logprobs

EPS = 1e-6


# ---- advantages ----

def test_group_advantages_hand_example_interleaved_string_ids():
    # group "a": [1, 0] -> mean .5, unbiased std sqrt(.5); group "b": [2, 4, 6] -> mean 4, std 2
    adv = group_advantages([2.0, 1.0, 4.0, 0.0, 6.0], ["b", "a", "b", "a", "b"])
    s = math.sqrt(0.5)
    expected = [-2 / (2 + EPS), 0.5 / (s + EPS), 0.0, -0.5 / (s + EPS), 2 / (2 + EPS)]
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-6, rtol=0)


def test_group_advantages_singleton_constant_and_dr_grpo():
    u = [uuid.uuid4() for _ in range(3)]
    scores = torch.tensor([3.0, 0.7, 0.7, 0.7, 5.0, 1.0])
    ids = [u[0], u[1], u[1], u[1], u[2], u[2]]
    adv = group_advantages(scores, ids)
    assert adv[0].item() == pytest.approx(3.0 / (1 + EPS), abs=1e-6)  # singleton: mean 0, std 1
    assert torch.equal(adv[1:4], torch.zeros(3))                       # constant group -> 0
    adv = group_advantages(scores, ids, norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([3.0, 0, 0, 0, 2.0, -2.0]))  # singleton: s - 0


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_group_advantages_matches_numpy(norm_by_std):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=40).astype(np.float32)
    ids = rng.integers(0, 9, size=40) * 7 + 100  # non-contiguous ints, random order
    adv = group_advantages(torch.from_numpy(scores), ids, norm_by_std=norm_by_std)
    ref = np.empty(40, dtype=np.float64)
    for g in np.unique(ids):
        sel = ids == g
        x = scores[sel].astype(np.float64)
        mean, std = (x.mean(), x.std(ddof=1)) if sel.sum() > 1 else (0.0, 1.0)
        ref[sel] = (x - mean) / (std + EPS) if norm_by_std else x - mean
    np.testing.assert_allclose(adv.numpy(), ref, atol=1e-5, rtol=0)


def test_group_advantages_rejects_length_mismatch():
    with pytest.raises(ValueError):
        group_advantages([1.0, 2.0], [0])


# ---- policy loss ----

# One token per case; ratio r = exp(logp), old_logp = 0. Worked by hand with clip 0.2/0.28, c = 10:
#   A   r     l1     l2     max    dual   per-token  clipped?  grad d/dlogp
CASES = [
    (+1, 1.5, -1.5, -1.28, -1.28, None, -1.28, True, 0.0),    # upper clip (clip-higher side)
    (+1, 0.5, -0.5, -0.8, -0.5, None, -0.5, False, -0.5),     # unclipped
    (-1, 0.5, 0.5, 0.8, 0.8, 0.8, 0.8, True, 0.0),            # lower clip
    (-1, 20., 20., 1.28, 20., 10., 10., False, 0.0),          # dual clip
    (-1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1, False, 1.1),           # inside the trust region
    (+1, 1.0, -1.0, -1.0, -1.0, None, -1.0, False, -1.0),     # on-policy
]


def _hand_batch():
    A = torch.tensor([[c[0] for c in CASES]], dtype=torch.float32)                   # (1, 6)
    logp = torch.log(torch.tensor([[c[1] for c in CASES]])).requires_grad_()         # (1, 6)
    return logp, torch.zeros_like(logp), A, torch.ones_like(A)


def test_policy_loss_hand_values_stats_and_gradients():
    logp, old, A, mask = _hand_batch()
    loss, stats = policy_loss(logp, old, A, mask)
    assert loss.item() == pytest.approx(sum(c[6] for c in CASES) / 6, abs=1e-6)  # 9.12 / 6
    assert stats["clipfrac"] == pytest.approx(2 / 6)
    assert stats["clipfrac_lower"] == pytest.approx(1 / 6)
    assert stats["ppo_kl"] == pytest.approx(-sum(math.log(c[1]) for c in CASES) / 6, abs=1e-6)
    assert all(isinstance(v, float) for v in stats.values())
    loss.backward()
    # d loss / d logp = d(-A r)/dlogp / 6 = -A r / 6 where unclipped, exactly 0 where clipped
    torch.testing.assert_close(logp.grad, torch.tensor([[c[8] / 6 for c in CASES]]), atol=1e-6, rtol=0)
    assert torch.equal(logp.grad[0, [0, 2, 3]], torch.zeros(3))


def test_policy_loss_rejects_clip_c_le_1():
    logp, old, A, mask = _hand_batch()
    with pytest.raises(ValueError):
        policy_loss(logp, old, A, mask, clip_c=1.0)


def test_policy_loss_extreme_ratios_are_clamped():
    logp = torch.tensor([[50.0, -50.0, 50.0, -50.0]], requires_grad=True)
    A = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = policy_loss(logp, torch.zeros_like(logp), A, torch.ones_like(A), agg="seq-mean-token-sum")
    # A>0, r=e^20: -1.28 ; A>0, r=e^-20: -e^-20 ; A<0, r=e^20: dual clip 10 ; A<0, r=e^-20: 0.8
    assert loss.item() == pytest.approx(-1.28 - math.exp(-20) + 10 + 0.8, abs=1e-5)
    assert stats["ppo_kl"] == 0.0  # mean of -clamp(+-50) = (-20 + 20 - 20 + 20) / 4
    loss.backward()
    assert torch.isfinite(logp.grad).all() and torch.equal(logp.grad, torch.zeros_like(logp.grad))


def _random_batch(B=5, T=7, seed=0, empty_rows=(2,)):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g)
    A = torch.randn(B, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    for r in empty_rows:
        mask[r] = 0
    return logp, old, A, mask


def _loop_agg(per_token, mask, agg):
    """Explicit python loops, the definition of each aggregation mode."""
    B, T = mask.shape
    if agg == "token-mean":
        return sum(per_token[i, t] for i in range(B) for t in range(T) if mask[i, t]) / mask.sum()
    rows = []
    for i in range(B):
        toks = [per_token[i, t] for t in range(T) if mask[i, t]]
        if agg == "seq-mean-token-sum-norm":
            rows.append(sum(toks) if toks else 0.0)
        elif toks:  # fully masked rows are not counted
            rows.append(sum(toks) / (len(toks) if agg == "seq-mean-token-mean" else 1))
    if agg == "seq-mean-token-sum-norm":  # Dr. GRPO: mean over non-empty sequences of token sum / T
        return sum(rows) / (T * sum(1 for i in range(B) if mask[i].sum() > 0))
    return sum(rows) / len(rows)


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_each_agg_mode_matches_explicit_loop(agg):
    logp, old, A, mask = _random_batch()
    per_token = torch.randn(5, 7)
    assert aggregate(per_token, mask, agg).item() == pytest.approx(float(_loop_agg(per_token, mask, agg)), abs=1e-6)
    # and through policy_loss: rebuild the per-token loss by hand from the verl formula
    ratio = torch.exp(logp.detach() - old)
    a = A[:, None]
    clipped = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.28))
    per_token = torch.where(a < 0, torch.minimum(-a * 10.0, clipped), clipped)
    loss, _ = policy_loss(logp, old, A, mask, agg=agg)
    assert loss.item() == pytest.approx(float(_loop_agg(per_token, mask, agg)), abs=1e-6)


def test_fully_masked_rows_are_ignored():
    logp, old, A, mask = _random_batch(empty_rows=(1, 3))
    garbage = logp.detach().clone()
    garbage[[1, 3]] = 1e4  # huge values in masked rows must not leak into the loss
    keep = [0, 2, 4]
    for agg in grpo.AGG_MODES:
        lp = garbage.clone().requires_grad_()
        loss, _ = policy_loss(lp, old, A, mask, agg=agg)
        sub, _ = policy_loss(garbage[keep], old[keep], A[keep], mask[keep], agg=agg)
        assert loss.item() == pytest.approx(sub.item(), abs=1e-6), agg
        loss.backward()
        assert torch.equal(lp.grad[[1, 3]], torch.zeros(2, 7))


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_fully_masked_batch_gives_zero_loss_and_zero_grad(agg):
    logp, old, A, mask = _random_batch()
    loss, stats = policy_loss(logp, old, A, torch.zeros_like(mask), agg=agg)
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert stats == {"clipfrac": 0.0, "clipfrac_lower": 0.0, "ppo_kl": 0.0}
    assert masked_mean(torch.randn(3), torch.zeros(3)).item() == 0.0


def test_sequence_advantages_equal_broadcast_token_advantages():
    logp, old, A, mask = _random_batch()
    for agg in grpo.AGG_MODES:
        l_seq, s_seq = policy_loss(logp, old, A, mask, agg=agg)
        l_tok, s_tok = policy_loss(logp, old, A[:, None].expand(-1, 7), mask, agg=agg)
        assert l_seq.item() == l_tok.item() and s_seq == s_tok


# ---- micro-batch invariance ----

@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_micro_batch_losses_sum_to_full_batch_loss(agg):
    g = torch.Generator().manual_seed(1)
    T, lengths = 64, [1, 3, 60, 64, 2, 50]  # very different per-row token counts
    B = len(lengths)
    logp0 = -torch.rand(B, T, generator=g) * 2
    old = logp0 + 0.4 * torch.randn(B, T, generator=g)
    A = torch.randn(B, generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()

    full_lp = logp0.clone().requires_grad_()
    full, _ = policy_loss(full_lp, old, A, mask, agg=agg)
    full.backward()

    # micro-batches: short rows {0,1,4} (padded only to their own length 3) and long rows {2,3,5}
    mbs = [([0, 1, 4], 3), ([2, 3, 5], T)] if agg != "seq-mean-token-sum-norm" else [([0, 1, 4], T), ([2, 3, 5], T)]
    norm = global_normalizer([mask[r, :t] for r, t in mbs], agg)
    micro_lp = logp0.clone().requires_grad_()
    total, naive = 0.0, 0.0
    for rows, t in mbs:
        loss, _ = policy_loss(micro_lp[rows, :t], old[rows, :t], A[rows], mask[rows, :t], agg=agg, normalizer=norm)
        loss.backward()
        total += loss.item()
        naive += policy_loss(micro_lp[rows, :t], old[rows, :t], A[rows], mask[rows, :t], agg=agg)[0].item() / len(mbs)
    assert total == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(micro_lp.grad, full_lp.grad, atol=1e-6, rtol=0)
    if agg == "token-mean":  # the per-micro-batch mean (old verl) is measurably wrong here
        assert abs(naive - full.item()) > 1e-2


def test_global_normalizer_counts():
    m1 = torch.tensor([[1, 1, 0], [0, 0, 0]])
    m2 = torch.tensor([[1, 1, 1, 1, 0]])
    assert global_normalizer([m1, m2], "token-mean") == 6.0
    assert global_normalizer([m1, m2], "seq-mean-token-mean") == 2.0
    assert global_normalizer([m1, m2], "seq-mean-token-sum") == 2.0
    assert global_normalizer([m1, m2], "seq-mean-token-sum-norm") == 2 * 5.0  # 2 non-empty rows x T
    assert global_normalizer([m1, m2], "seq-mean-token-sum-norm", max_len=48) == 2 * 48.0
    with pytest.raises(ValueError):
        global_normalizer([m1], "sum")


# ---- KL penalty ----

def test_kl_penalty_kinds_on_hand_values():
    logp, ref = torch.tensor([0.0, -1.0]), torch.tensor([-1.0, 0.0])
    for kind in ("k1", "kl"):
        torch.testing.assert_close(kl_penalty(logp, ref, kind), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "abs"), torch.tensor([1.0, 1.0]))
    for kind in ("k2", "mse"):
        torch.testing.assert_close(kl_penalty(logp, ref, kind), torch.tensor([0.5, 0.5]))
    # k3: kl = ref - logp = [-1, 1]; e^-1 + 1 - 1 = e^-1 ; e - 1 - 1 = e - 2
    for kind in ("k3", "low_var_kl"):
        torch.testing.assert_close(kl_penalty(logp, ref, kind), torch.tensor([math.exp(-1), math.e - 2]))
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "full")


def test_k3_is_clamped():
    logp = torch.tensor([0.0, 0.0, 0.0, 0.0])
    ref = torch.tensor([3.0, 30.0, -30.0, -5.0])
    # e^3 - 4 = 16.1 -> 10 ; e^20 - 21 -> 10 ; e^-20 + 19 -> 10 ; e^-5 + 4 = 4.0067 (not clamped)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([10.0, 10.0, 10.0, math.exp(-5) + 4]))


# ---- chunked log-probs and entropy ----

def _naive_logprobs(logits, targets, temperature):
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, targets[..., None]).squeeze(-1)


def _logprobs_and_grad(fn, base, targets, w):
    x = base.clone().requires_grad_()
    out = fn(x)
    (out * w).sum().backward()
    assert torch.equal(x.detach(), base)  # the logits are never modified in place
    return out, x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature,chunk", [(1.0, 3), (0.7, 4), (1.3, 1), (1.0, 512)])
def test_token_logprobs_matches_naive_value_and_grad(dtype, temperature, chunk):
    B, T, V = 2, 5, 151_936  # Qwen vocabulary; chunk sizes 3 and 4 do not divide B*T = 10
    g = torch.Generator().manual_seed(chunk)
    base = torch.randn(B, T, V, generator=g).to(dtype)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, 0] = base[0, 0].float().argmax()  # one high-probability target
    w = torch.randn(B, T, generator=g)

    mine, mine_grad = _logprobs_and_grad(lambda x: token_logprobs(x, targets, temperature, chunk), base, targets, w)
    # the naive reference runs on the same (bf16) logits, upcast
    ref, ref_grad = _logprobs_and_grad(lambda x: _naive_logprobs(x, targets, temperature), base, targets, w)

    assert mine.dtype == torch.float32 and mine.shape == (B, T)
    # both sum 151,936 exps in float32, in orders that depend on the CPU's vector width (AVX2 vs AVX-512):
    # a few float32 ulps of a log-prob near -13 (rtol 1e-6 = 8 ulps)
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-6)
    assert mine_grad.dtype == dtype
    # bf16 gradients are rounded to bf16 on both sides: allow one bf16 ulp
    rtol = 0 if dtype == torch.float32 else 2 ** -7
    torch.testing.assert_close(mine_grad.float(), ref_grad.float(), atol=1e-5, rtol=rtol)


def test_token_logprobs_large_logits_match_float64():
    # With logit std ~4 the float32 naive log_softmax on CPU is itself ~2e-5 off (its softmax sum
    # is sequential); the chunked logsumexp stays within a few ulps of the float64 answer.
    B, T, V = 2, 5, 151_936
    g = torch.Generator().manual_seed(7)
    base = torch.randn(B, T, V, generator=g) * 3
    targets = torch.randint(0, V, (B, T), generator=g)
    w = torch.randn(B, T, generator=g)
    mine, mine_grad = _logprobs_and_grad(lambda x: token_logprobs(x, targets, 0.7, 3), base, targets, w)
    truth, truth_grad = _logprobs_and_grad(lambda x: torch.log_softmax(x / 0.7, -1).gather(-1, targets[..., None]).squeeze(-1),
                                           base.double(), targets, w.double())
    torch.testing.assert_close(mine.double(), truth, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine_grad.double(), truth_grad, atol=1e-5, rtol=0)


def test_token_logprobs_never_materialises_float32_logits():
    dispatch = pytest.importorskip("torch.utils._python_dispatch")
    B, T, V, chunk = 2, 6, 5000, 4
    logits = torch.randn(B, T, V, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, V, (B, T))
    biggest = []

    class Watch(dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor) and o.dtype == torch.float32:
                    biggest.append(o.numel())
            return out

    with Watch():
        token_logprobs(logits, targets, chunk_size=chunk).sum().backward()
        token_entropy(logits, chunk_size=chunk)
    assert biggest and max(biggest) <= chunk * V  # never a float32 (B*T, V) tensor


def _entropy(x):
    return -(torch.softmax(x, -1) * torch.log_softmax(x, -1)).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale,temperature,chunk", [(1.0, 1.0, 3), (1.0, 0.6, 7), (3.0, 0.7, 4)])
def test_token_entropy_matches_naive(dtype, scale, temperature, chunk):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 151_936, generator=g) * scale).to(dtype)
    mine = token_entropy(logits, temperature, chunk_size=chunk)
    assert mine.dtype == torch.float32 and mine.shape == (2, 5)
    torch.testing.assert_close(mine.double(), _entropy(logits.double() / temperature), atol=1e-5, rtol=0)
    if scale == 1.0:  # the float32 naive formula drifts by ~1e-4 at larger logits (CPU softmax sum)
        torch.testing.assert_close(mine, _entropy(logits.float() / temperature), atol=1e-5, rtol=1e-5)


# ---- the sampler/trainer gap and truncated importance sampling ----

class OneProcess:
    """A world of one without torch.distributed: what policy_update needs of fsdp.World."""
    size, device = 1, torch.device("cpu")

    def sum(self, values):
        return [float(v) for v in values]

    max = sum

    def sum_named(self, sums):
        return {k: float(v) for k, v in sums.items()}


def _tiny_qwen3():
    import transformers
    config = transformers.Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=128, initializer_range=0.2)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).float().eval()


@pytest.fixture(scope="module")
def rollouts():
    """A tiny model and its own samples: ragged prompts, 2 samples each, responses cut to ragged lengths
    (a prefix of a sample is a sample, with the same log-probs)."""
    from sampler import generate
    model = _tiny_qwen3()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(8, 96, (n,), generator=g).tolist() for n in (3, 9, 5, 12)]
    comps = generate(model, prompts, 10, temperature=0.9, seed=0, n=2)
    adv = torch.randn(len(comps), generator=g).tolist()
    cut = [10, 4, 7, 1, 9, 10, 3, 6]
    samples = [grpo.Sample(prompts[i // 2], c.tokens[:n], a, sampler_logp=c.logprobs[:n])
               for i, (c, a, n) in enumerate(zip(comps, adv, cut))]
    samples[1].advantage = [adv[1] * (t + 1) / 4 for t in range(len(samples[1].response))]  # per-token path
    assert len({len(s.response) for s in samples}) > 1  # ragged responses: padding is exercised
    return model, samples


def _update(model, samples, shift=None, **kw):
    """One policy_update with SGD(lr=0.1) on a copy of model; shift(i, logprobs) edits the sampler's log-probs.
    Returns the parameter change and the stats."""
    import copy
    m = copy.deepcopy(model)
    if shift is not None:
        samples = [grpo.Sample(s.prompt, s.response, s.advantage, sampler_logp=shift(i, s.sampler_logp))
                   for i, s in enumerate(samples)]
    cfg = grpo.UpdateSettings(pad_id=0, temperature=0.9, micro_batch=3, grad_clip=1e9, **kw)
    stats = grpo.policy_update(m, torch.optim.SGD(m.parameters(), lr=0.1), samples, cfg, OneProcess())
    before = dict(model.named_parameters())
    return {k: p.detach() - before[k].detach() for k, p in m.named_parameters()}, stats


@pytest.mark.parametrize("mini_batches", [1, 2])
def test_sampler_and_trainer_logprobs_agree_on_cpu_fp32(rollouts, mini_batches):
    model, samples = rollouts
    _, st = _update(model, samples, mini_batches=mini_batches)
    assert st["gap_mean"] < 1e-5 and st["gap_max"] < 1e-5 and 0 <= st["gap_kl"] < 1e-8
    _, st = _update(model, samples, shift=lambda i, lp: None)
    assert "gap_mean" not in st and "tis_weight" not in st  # no sampler log-probs: nothing to report


def test_gap_stats_and_tis_on_a_known_mismatch(rollouts):
    model, samples = rollouts
    off, _ = _update(model, samples)
    assert max(d.abs().max().item() for d in off.values()) > 1e-3  # the update is not vacuous
    # the sampler gave every token half the trainer's probability: d = log 2 everywhere, w = 2
    half = lambda i, lp: [x - math.log(2) for x in lp]  # noqa: E731
    n_tok = sum(len(s.response) for s in samples)
    for cap, w in [(10.0, 2.0), (1.5, 1.5)]:
        delta, st = _update(model, samples, shift=half, tis_cap=cap)
        assert st["gap_mean"] == pytest.approx(math.log(2), abs=1e-5)
        assert st["gap_max"] == pytest.approx(math.log(2), abs=1e-5)
        k3 = 2 - math.log(2) - 1  # per token; summed per sequence, averaged over sequences
        assert st["gap_kl"] == pytest.approx(k3 * n_tok / len(samples), rel=1e-4)
        assert st["tis_weight"] == pytest.approx(w, rel=1e-5)
        for k in off:  # a uniform weight w scales every token's loss, so the SGD step, by w
            torch.testing.assert_close(delta[k], w * off[k], atol=1e-6, rtol=1e-4)


def test_tis_with_infinite_cap_leaves_the_update_unchanged(rollouts):
    model, samples = rollouts
    off, _ = _update(model, samples)
    inf, st = _update(model, samples, tis_cap=math.inf)
    assert st["tis_weight"] == pytest.approx(1.0, abs=1e-5)
    for k in off:
        torch.testing.assert_close(inf[k], off[k], atol=1e-6, rtol=0)


def test_tis_with_small_cap_and_mismatch_changes_the_update(rollouts):
    model, samples = rollouts
    g = torch.Generator().manual_seed(2)
    noise = [(torch.rand(len(s.response), generator=g) - 0.5).tolist() for s in samples]  # d = -noise
    shift = lambda i, lp: [x + e for x, e in zip(lp, noise[i])]  # noqa: E731
    off, _ = _update(model, samples)
    delta, st = _update(model, samples, shift=shift, tis_cap=1.1)
    flat = torch.tensor([e for row in noise for e in row])
    assert st["tis_weight"] == pytest.approx(torch.exp(-flat).clamp(max=1.1).mean().item(), abs=1e-5)
    assert st["gap_max"] == pytest.approx(flat.abs().max().item(), abs=1e-5)
    assert max((delta[k] - off[k]).abs().max().item() for k in off) > 1e-4
    with pytest.raises(ValueError):  # one log-prob per response token, or the gap would be misaligned
        _update(model, samples, shift=lambda i, lp: lp[:-1])


def _two_adam_steps(model, first, second, **kw):
    """Adam on a copy of model: an update on `first` (momentum), then one on `second`. Returns the final weights
    and the number of forward passes the second update ran."""
    import copy
    m = copy.deepcopy(model)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    kw.setdefault("share_prompts", False)  # the rows counted below are one forward's (not a prompt's, then its responses')
    cfg = grpo.UpdateSettings(pad_id=0, temperature=0.9, micro_batch=2, grad_clip=1e9, **kw)
    grpo.policy_update(m, opt, first, cfg, OneProcess())
    calls = []
    hook = m.get_input_embeddings().register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    grpo.policy_update(m, opt, second, cfg, OneProcess())
    hook.remove()
    return {k: p.detach().clone() for k, p in m.named_parameters()}, calls


@pytest.mark.parametrize("mini_batches", [1, 2])
def test_skipping_zero_advantage_samples_gives_the_same_update(rollouts, mini_batches):
    model, samples = rollouts
    zeroed = [grpo.Sample(s.prompt, s.response, 0.0 if i in (0, 3, 6) else s.advantage, sampler_logp=s.sampler_logp)
              for i, s in enumerate(samples)]
    zeroed[1].advantage = [0.0] * len(zeroed[1].response)  # per-token advantages, all 0: skipped too
    live = [s for i, s in enumerate(zeroed) if i not in (0, 1, 3, 6)]
    assert grpo.trained_samples(zeroed, grpo.UpdateSettings(pad_id=0), with_kl=False) == live
    assert grpo.trained_samples(zeroed, grpo.UpdateSettings(pad_id=0), with_kl=True) == zeroed  # KL: all run
    naive, calls_naive = _two_adam_steps(model, samples, zeroed, skip_zero_advantage=False, mini_batches=mini_batches)
    fast, calls_fast = _two_adam_steps(model, samples, zeroed, mini_batches=mini_batches)
    passes = 2 if mini_batches > 1 else 1  # the pre-update log-prob pass, then the update's
    assert sum(calls_fast) == passes * len(live) < sum(calls_naive) == passes * len(zeroed)  # skipped rows never ran
    for k in naive:
        torch.testing.assert_close(fast[k], naive[k], atol=1e-6, rtol=1e-5)
    # nothing to train: one zero-weight filler runs, and Adam still steps on its momentum, as the naive path does
    none = [grpo.Sample(s.prompt, s.response, 0.0) for s in samples]
    naive, _ = _two_adam_steps(model, samples, none, skip_zero_advantage=False)
    fast, calls = _two_adam_steps(model, samples, none)
    assert calls == [1]
    moved = max((naive[k] - p.detach()).abs().max().item() for k, p in model.named_parameters())
    assert moved > 1e-3  # the momentum step is real
    for k in naive:
        torch.testing.assert_close(fast[k], naive[k], atol=1e-6, rtol=1e-5)


# ---- each prompt once: collate_shared against collate ----


def _logprobs_and_grads(model, samples, shared, temperature=0.9):
    import copy
    m = copy.deepcopy(model).train()
    batch, R = (logprobs.collate_shared if shared else logprobs.collate)([s.prompt for s in samples],
                                                                 [s.response for s in samples], 0, torch.device("cpu"))
    logp, ent = logprobs.response_logprobs(m, batch, R, temperature, want_entropy=True)
    w = torch.linspace(-1, 1, logp.numel()).view_as(logp)
    (logp * w * batch["mask"]).sum().backward()
    return logp.detach() * batch["mask"], ent * batch["mask"], {k: p.grad for k, p in m.named_parameters()}, batch["mask"]


def test_shared_prompts_give_the_naive_logprobs_entropy_and_gradient(rollouts):
    """Each distinct prompt runs once and its responses attend to its cached keys and values: the log-probs,
    the entropy and the gradient (which flows back into the prompt) are the full forward's, to float rounding.
    Ragged prompts and responses, a 1-token response, a filler, prompts not in group order."""
    model, samples = rollouts
    mixed = [samples[k] for k in (0, 5, 1, 3, 2, 7, 4, 6)] + grpo.fillers(samples, 1)
    naive, shared = _logprobs_and_grads(model, mixed, False), _logprobs_and_grads(model, mixed, True)
    assert torch.equal(naive[3], shared[3])
    torch.testing.assert_close(shared[0], naive[0], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(shared[1], naive[1], atol=1e-5, rtol=1e-6)
    for k, g in naive[2].items():  # float rounding, relative to each parameter's gradient
        assert (shared[2][k] - g).norm() <= 1e-5 * g.norm() + 1e-9, k
    batch, R = logprobs.collate_shared([s.prompt for s in mixed], [s.response for s in mixed], 0, torch.device("cpu"))
    assert batch["p_ids"].shape[0] == 5 and batch["rows"].tolist() == [0, 1, 0, 2, 2, 3, 1, 3, 4]  # 4 prompts, the filler its own
    assert R == 10 and logprobs.collate_shared([[1, 2]], [[3]], 0, torch.device("cpu"))[1] == 2  # two forwards always


def test_shared_prompts_give_the_same_update_with_fewer_tokens(rollouts):
    """policy_update on shared prompts: the same weights after a step, fewer prompt tokens through the model."""
    model, samples = rollouts
    tokens = {}
    out = {}
    for share in (False, True):
        import copy
        m = copy.deepcopy(model)
        seen = []
        m.get_input_embeddings().register_forward_hook(lambda mod, args, o: seen.append(args[0].numel()))
        cfg = grpo.UpdateSettings(pad_id=0, temperature=0.9, micro_batch=4, grad_clip=1e9, share_prompts=share)
        grpo.policy_update(m, torch.optim.SGD(m.parameters(), lr=0.1), samples, cfg, OneProcess())
        out[share], tokens[share] = {k: p.detach() for k, p in m.named_parameters()}, sum(seen)
    assert tokens[True] < tokens[False]
    for k in out[False]:
        torch.testing.assert_close(out[True][k], out[False][k], atol=1e-6, rtol=1e-4)


def test_prompts_are_not_shared_where_the_cache_would_differ():
    import transformers
    import config
    assert logprobs.can_share_prompts(_tiny_qwen3())
    for flag, share in (("--grad-checkpointing", False), ("--no-grad-checkpointing", True)):  # HF: no cache under it
        assert config.update_settings(config.parse_config([flag]), 0).share_prompts is share
    gemma = transformers.Gemma3TextConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                                          layer_types=["sliding_attention", "full_attention"])
    assert not logprobs.can_share_prompts(transformers.AutoModelForCausalLM.from_config(gemma))  # a window drops keys
