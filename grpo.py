"""GRPO building blocks with verl semantics: group advantages, the clipped policy
loss and its aggregation, KL penalties, the update (per-token log-probs: logprobs.py).

Equations (the numbers match verl's core_algos.py, which the FAPO paper,
arXiv 2510.22543, trained with):

  advantage    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)       unbiased std
               A_i = r_i - mean_g(r)                            Dr. GRPO (norm_by_std=False)
               a singleton group uses mean 0, std 1.
  ratio        rho_t = exp(clamp(logp_t - old_logp_t, -20, 20))
  loss         l_t = max(-A rho_t, -A clamp(rho_t, 1 - eps_low, 1 + eps_high))
               (DAPO clip-higher), and for A < 0 the dual clip l_t = min(l_t, -A c).
  aggregation  token-mean               sum_t m l / sum_t m
               seq-mean-token-sum       mean_i  sum_t m l
               seq-mean-token-mean      mean_i (sum_t m l / sum_t m)
               seq-mean-token-sum-norm  sum_i sum_t m l / (N L)       (Dr. GRPO: N sequences, L a constant length)
  KL           k1 = logp - ref,  k2 = (logp - ref)^2 / 2,
               k3 = exp(ref - logp) - (ref - logp) - 1              (Schulman's low-var)
  sampler gap  d_t = old_logp_t - sampler_logp_t: mean |d|, max |d|, gap_kl = mean_i sum_t exp(d_t) - d_t - 1
  TIS          A_t <- A min(exp(d_t), tis_cap)  (verl's rollout correction; not in the paper, off by default)

and the update itself (batches laid out as [left-padded prompt | right-padded response], so the
logits that predict response tokens are the last R + 1 positions): policy_update runs one step of
mini-batch / micro-batch GRPO updates with the exact global normaliser; sft_update the cross-entropy
cold start.

Usage:
  adv = group_advantages(rewards, uids)                      # (N,)
  norm = global_normalizer([mb.mask for mb in micro_batches])  # whole mini-batch
  for mb in micro_batches:
      logp = token_logprobs(model(mb.ids).logits[:, :-1], mb.ids[:, 1:], temperature)
      loss, stats = policy_loss(logp, mb.old_logp, mb.adv, mb.mask, normalizer=norm)
      loss.backward()                  # gradients sum to the full-batch token-mean
"""
import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor

from logprobs import can_share_prompts, collate, collate_shared, response_logprobs

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# ---- advantages ----

@torch.no_grad()
def group_advantages(scores, group_ids, norm_by_std=True, eps=1e-6):
    """GRPO outcome advantages: normalise each score within its prompt group.
    scores: (N,) tensor or list; group_ids: N hashables (ints, strings, uuids), any order."""
    # verl computes in the scores' dtype (float32 rewards); we always use float32.
    scores = torch.as_tensor(scores, dtype=torch.float32)  # (N,)
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    if scores.dim() != 1 or len(ids) != scores.shape[0]:
        raise ValueError(f"need (N,) scores and N group ids, got {tuple(scores.shape)} and {len(ids)}")
    members = defaultdict(list)
    for i, g in enumerate(ids):
        members[g].append(i)
    mean = torch.zeros_like(scores)  # (N,) singleton groups keep mean 0, std 1, as in verl
    std = torch.ones_like(scores)    # (N,)
    for idx in members.values():
        if len(idx) < 2:
            continue
        idx = torch.tensor(idx, device=scores.device)
        group = scores[idx]  # same as verl's torch.stack of the group's scores
        mean[idx] = torch.mean(group)
        std[idx] = torch.std(group)  # unbiased (ddof=1), verl's choice
    adv = scores - mean
    return adv / (std + eps) if norm_by_std else adv


# ---- aggregation ----

def _safe_div(num, den):
    """num / den, with den == 0 replaced by 1: an empty mask gives 0 (the numerator is a masked
    sum, hence 0 too) and a zero gradient, never NaN. verl adds 1e-8 instead; same to ~1e-8."""
    den = torch.as_tensor(den, dtype=num.dtype, device=num.device)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def masked_mean(x, mask):
    """Mean of x over the positions where mask is 1 (0.0 if the mask is empty)."""
    mask = mask.to(x.dtype)
    return _safe_div((x * mask).sum(), mask.sum())


def aggregate(loss_mat, mask, agg="token-mean", normalizer=None):
    """Reduce a (B, T) per-token loss to a scalar (verl's agg_loss).

    normalizer=None divides by the local count (token count, non-empty row count, or T).
    Given a normalizer (from global_normalizer over ALL micro-batches of the optimizer step),
    the loss is local_sum / normalizer, so the micro-batch losses SUM to the full-batch loss (older verl
    averaged per micro-batch: docs/departures.md). Under data parallelism multiply by world_size.
    """
    mask = mask.to(loss_mat.dtype)
    if agg == "token-mean":
        den = mask.sum() if normalizer is None else normalizer
        return _safe_div((loss_mat * mask).sum(), den)
    row_sums = (loss_mat * mask).sum(-1)  # (B,)
    row_counts = mask.sum(-1)             # (B,)
    if agg == "seq-mean-token-sum-norm":
        # Dr. GRPO: mean over sequences of (token sum / L), L a constant (here the padded width T; in
        # policy_update max_response_len); verl's version differs by a constant (docs/departures.md)
        den = (row_counts > 0).sum() * mask.shape[-1] if normalizer is None else normalizer
        return _safe_div(row_sums.sum(), den)
    if agg == "seq-mean-token-sum":
        rows = row_sums
    elif agg == "seq-mean-token-mean":
        rows = _safe_div(row_sums, row_counts)  # (B,) empty rows give 0
    else:
        raise ValueError(f"unknown agg {agg!r}, expected one of {AGG_MODES}")
    # Fully masked rows are not counted, like current verl's seq_mask.
    den = (row_counts > 0).sum() if normalizer is None else normalizer
    return _safe_div(rows.sum(), den)


def global_normalizer(masks, agg="token-mean", max_len=None):
    """The normalizer to pass to every micro-batch of one optimizer step (a python float):
    total token count (token-mean), non-empty row count (seq-mean-*), or non-empty row count x L
    (seq-mean-token-sum-norm; L = max_len, default the largest padded length T). In data parallel,
    sum the counts over ranks (all_reduce) before multiplying by L."""
    if isinstance(masks, torch.Tensor):
        masks = [masks]
    rows = float(sum((m.sum(-1) > 0).sum().item() for m in masks))
    if agg == "token-mean":
        return float(sum(m.sum().item() for m in masks))
    if agg in ("seq-mean-token-sum", "seq-mean-token-mean"):
        return rows
    if agg == "seq-mean-token-sum-norm":
        return rows * float(max_len or max(m.shape[-1] for m in masks))
    raise ValueError(f"unknown agg {agg!r}, expected one of {AGG_MODES}")


# ---- policy loss ----

def policy_loss(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.28, clip_c=10.0,
                agg="token-mean", normalizer=None):
    """verl's vanilla PPO loss: clip-higher plus dual clip. logp/old_logp/mask (B, T),
    advantages (B,) or (B, T). Returns (scalar loss, dict of python-float stats)."""
    if clip_c <= 1.0:
        raise ValueError(f"dual-clip constant clip_c must be > 1, got {clip_c}")
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv  # (B, 1) broadcasts over tokens
    neg_kl = torch.clamp(logp - old_logp, -20.0, 20.0)  # (B, T) clamp keeps exp finite
    ratio = torch.exp(neg_kl)                            # (B, T)
    l1 = -adv * ratio                                                   # (B, T)
    l2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)    # (B, T)
    clipped = torch.maximum(l1, l2)                                     # (B, T)
    l3 = -adv * clip_c  # dual clip bounds the loss of A < 0 tokens whose ratio exploded
    dual = torch.minimum(l3, clipped)
    per_token = torch.where(adv < 0, dual, clipped)                     # (B, T)
    loss = aggregate(per_token, mask, agg, normalizer)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((l2 > l1).float(), mask).item(),
            "clipfrac_lower": masked_mean(((clipped > l3) & (adv < 0)).float(), mask).item(),
            "ppo_kl": masked_mean(-neg_kl, mask).item(),
        }
    return loss, stats


# ---- KL penalty ----

def kl_penalty(logp, ref_logp, kind="low_var_kl"):
    """Per-token KL estimate between the policy and the reference (verl's kl_penalty)."""
    if kind in ("k1", "kl"):
        return logp - ref_logp
    if kind == "abs":
        return (logp - ref_logp).abs()
    if kind in ("k2", "mse"):
        return 0.5 * (logp - ref_logp).square()
    if kind in ("k3", "low_var_kl"):
        kl = torch.clamp(ref_logp - logp, -20.0, 20.0)
        kld = torch.exp(kl) - kl - 1
        return torch.clamp(kld, -10.0, 10.0)  # verl clamps so one outlier token can't dominate
    raise ValueError(f"unknown KL kind {kind!r}: use k1/kl, abs, k2/mse, k3/low_var_kl")


def chunks(seq, size):
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def pack_by_tokens(samples, budget):
    """Micro-batches of samples whose padded size rows x (longest prompt + longest response) stays
    under `budget` tokens (verl's dynamic batch size): longest first, greedy. A sample longer than the
    budget alone gets a micro-batch of its own (never dropped)."""
    order = sorted(range(len(samples)), key=lambda i: -(len(samples[i].prompt) + len(samples[i].response)))
    out, cur, p_max, r_max = [], [], 0, 0
    for i in order:
        p, r = max(p_max, len(samples[i].prompt)), max(r_max, len(samples[i].response))
        if cur and (len(cur) + 1) * (p + r) > budget:
            out.append(cur)
            cur, p, r = [], len(samples[i].prompt), len(samples[i].response)
        cur.append(samples[i])
        p_max, r_max = p, r
    return out + ([cur] if cur else [])


def micro_batches(samples, rows, tokens, world):
    """Split one mini-batch into micro-batches: by `tokens` (padded tokens) when > 0, else by `rows`. Every
    rank gets the same number (FSDP2's collectives need equal forward/backward counts): a rank short of
    the maximum runs zero-weight copies of a sample, which add nothing to the gradient."""
    mbs = pack_by_tokens(samples, tokens) if tokens > 0 else chunks(samples, rows)
    target = int(world.max([len(mbs)])[0])
    return mbs + [[f] for f in fillers(samples, target - len(mbs))]


def fillers(samples, count):
    """count zero-weight samples (one token of samples[0]): they pad a rank's passes to its peers' count
    (FSDP needs every rank in every collective) and add nothing to the loss or its normaliser."""
    return [Sample(samples[0].prompt[:1], samples[0].response[:1], 0.0, weight=0.0) for _ in range(count)]


# ---- the update: exact global token-mean over micro-batches and ranks ----


@dataclass
class Sample:
    """One rollout to learn from."""
    prompt: list            # prompt token ids
    response: list          # the sampled response ids, trained on as sampled (never re-tokenised)
    advantage: float | list  # one per sequence (GRPO), or one per response token
    weight: float = 1.0     # 0 for rows that only pad a rank's batch (FSDP needs equal pass counts)
    old_logp: torch.Tensor | None = None  # filled by policy_update when mini_batches > 1
    sampler_logp: list | None = None  # the sampler's log-prob of each response token: the gap and TIS


@dataclass
class UpdateSettings:
    """Everything policy_update needs to know (train.py builds it from its config)."""
    pad_id: int
    temperature: float = 1.0       # the sampling temperature: log-probs are of the distribution sampled from
    mini_batches: int = 1          # optimizer updates per step (> 1 recomputes the pre-update log-probs)
    micro_batch: int = 64          # rows per forward/backward (when micro_batch_tokens is 0)
    micro_batch_tokens: int = 0    # padded tokens per forward/backward of the update (verl: ppo_max_token_len)
    logprob_batch_tokens: int = 0  # the same for the no-grad log-prob passes (old policy, reference)
    loss_agg: str = "token-mean"
    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_c: float = 10.0
    grad_clip: float = 1.0
    kl_coef: float = 0.0           # KL-to-reference loss (0: no reference pass)
    kl_kind: str = "k3"
    max_response_len: int | None = None  # Dr. GRPO's constant L
    tis_cap: float = 0.0           # > 0: truncated importance weight min(pi_old / pi_sampler, cap) (not in the paper)
    skip_zero_advantage: bool = True  # no forward/backward for samples whose loss is 0 (see trained_samples)
    share_prompts: bool = True     # each prompt once per micro-batch (collate_shared); off under gradient checkpointing


def _advantages(mb, R, device):
    """(B,) for per-sequence advantages, (B, R) when any sample has per-token ones."""
    if all(isinstance(s.advantage, (int, float)) for s in mb):
        return torch.tensor([float(s.advantage) for s in mb], dtype=torch.float32, device=device)
    rows = [[float(s.advantage)] * len(s.response) if isinstance(s.advantage, (int, float)) else list(s.advantage)
            for s in mb]
    return torch.tensor([r + [0.0] * (R - len(r)) for r in rows], dtype=torch.float32, device=device)


def _sampler_gap(mb, old, mask, tis_cap):
    """The sampler/trainer gap of one micro-batch and the TIS weights. old (B, R): the trainer's pre-update log-probs;
    mask (B, R): real tokens x weight. Returns named sums (0-dim float64 tensors), the max |gap| and w (B, R)."""
    sampler, has = torch.zeros(old.shape), torch.zeros(len(mb), 1)  # (B, R), (B, 1) built on the host
    for i, s in enumerate(mb):
        if s.sampler_logp is not None:
            if len(s.sampler_logp) != len(s.response):
                raise ValueError(f"sampler_logp has {len(s.sampler_logp)} entries for {len(s.response)} tokens")
            sampler[i, :len(s.response)], has[i] = torch.as_tensor(s.sampler_logp, dtype=torch.float32), 1.0
    gmask = (mask > 0).float() * has.to(mask.device)                  # (B, R) real tokens with sampler log-probs
    diff = (old - sampler.to(old.device)) * gmask                     # (B, R) log(pi_train / pi_sampler)
    lr = diff.clamp(-20.0, 20.0)                                      # (B, R) keeps exp finite
    # k3 = r - 1 - log r, r = pi_train / pi_sampler on tokens the sampler drew: E_sampler[r] = 1, so by the chain
    # rule its sum over a response estimates KL(sampler || trainer) of whole responses (with top-k / top-p the
    # sampler's log-probs are untruncated: this measures numerics, not the truncation)
    k3 = ((lr.exp() - lr - 1) * gmask).sum(-1)                        # (B,)
    # TIS (verl's rollout correction, not in the paper): w = min(pi_old / pi_sampler, cap), detached; rows
    # without sampler log-probs keep w = 1
    w = torch.where(gmask > 0, lr.exp().clamp(max=tis_cap), 1.0) if tis_cap > 0 else torch.ones_like(old)
    sums = {"gap_abs": diff.abs().sum(), "gap_tokens": gmask.sum(), "gap_k3": k3.sum(),
            "gap_rows": (gmask.sum(-1) > 0).sum(), "tis_weight": (w * gmask).sum()}
    return {k: v.double() for k, v in sums.items()}, diff.abs().max(), w


def _normalizer(mini, cfg: UpdateSettings, world):
    """The whole mini-batch's token (or sequence) count over all ranks: the exact global mean."""
    masks = [torch.full((1, len(s.response)), float(s.weight)) for s in mini]
    if cfg.loss_agg == "seq-mean-token-sum-norm":
        return world.sum([global_normalizer(masks, "seq-mean-token-mean")])[0] * cfg.max_response_len
    return world.sum([sum(global_normalizer(m, cfg.loss_agg) for m in masks)])[0]


def trained_samples(mini, cfg: UpdateSettings, with_kl: bool):
    """The samples of a mini-batch whose loss can be non-zero. Without a KL term, a sample whose advantage is 0 on
    every token (each member of a group whose rewards are all equal: all right or all wrong) has loss and gradient
    exactly 0 whatever its ratio, so its forward and backward are skipped: the gradient is unchanged (up to float
    summation order) and its tokens still count in the normaliser, computed on the whole mini-batch. A mini-batch
    with nothing to train runs one zero-weight filler, so the optimizer still steps on zero gradients (Adam's
    momentum moves the weights) exactly as it would have. Logged entropy, clipfrac and gap are over the trained
    samples. cfg.skip_zero_advantage False: every sample runs (the naive path; tests compare the two)."""
    if not cfg.skip_zero_advantage or with_kl:
        return mini
    live = [s for s in mini if s.weight and any(a != 0 for a in (
        [s.advantage] if isinstance(s.advantage, (int, float)) else s.advantage))]
    return live or fillers(mini, 1)


def batch_of(mb, cfg: UpdateSettings, world, share: bool):
    """(batch, R, mask): a micro-batch's tensors from collate_shared (every prompt once) or collate, the same choice
    on every rank, and its (B, R) mask of real response tokens times each sample's weight (0 for a filler)."""
    batch, R = (collate_shared if share else collate)([s.prompt for s in mb], [s.response for s in mb], cfg.pad_id,
                                                      world.device)
    return batch, R, batch["mask"] * torch.tensor([s.weight for s in mb], device=world.device)[:, None]


@torch.no_grad()
def store_old_logprobs(model, samples, cfg: UpdateSettings, world, share: bool):
    """Log-probs of the policy before this step's first update (the ratio's denominator)."""
    for mb in micro_batches(samples, cfg.micro_batch, cfg.logprob_batch_tokens, world):
        batch, R, _ = batch_of(mb, cfg, world, share)
        old, _ = response_logprobs(model, batch, R, cfg.temperature)
        for s, row in zip(mb, old):
            s.old_logp = row[: len(s.response)].cpu()


# what policy_update sums over micro-batches and ranks (one all-reduce, by name); the four averaged ones are
# means over the micro-batches that trained something (none: not logged, rather than a made-up 0)
AVERAGED = ("clipfrac", "clipfrac_lower", "ppo_kl", "entropy")
SUMMED = ("loss", "kl", "micro_batches", "trained", "rollouts", "gap_abs", "gap_tokens", "gap_k3", "gap_rows",
          "tis_weight") + AVERAGED


def policy_update(model, optimizer, samples, cfg: UpdateSettings, world, ref_model=None):
    """One step of GRPO updates on this rank's samples. world: anything with .size, .device, .sum_named(dict)
    and .max(list) (fsdp.World). Every rank must call it (FSDP collectives). Returns global stats (with
    gap_mean, gap_max, gap_kl when samples carry sampler_logp, and tis_weight when tis_cap > 0); an update
    whose gradient norm is not finite is skipped and counted."""
    share = cfg.share_prompts and can_share_prompts(model)
    with_kl = ref_model is not None
    if cfg.mini_batches > 1:  # several updates per step: the ratio needs the pre-update policy
        store_old_logprobs(model, trained_samples(samples, cfg, with_kl), cfg, world, share)
    sums = dict.fromkeys(SUMMED, 0.0)  # the same names on every rank
    sums["rollouts"] = sum(1 for s in samples if s.weight)
    gap_max, grad_norms = 0.0, []
    for mini in chunks(samples, math.ceil(len(samples) / cfg.mini_batches)):
        normalizer = _normalizer(mini, cfg, world)  # every sample's tokens, trained or not
        live = trained_samples(mini, cfg, with_kl)
        sums["trained"] += sum(1 for s in live if s.weight)
        for mb in micro_batches(live, cfg.micro_batch, cfg.micro_batch_tokens, world):
            loss, stats, mb_gap_max = micro_batch_loss(model, mb, normalizer, cfg, world, share, ref_model)
            # FSDP averages gradients over ranks; the normaliser is already global, so undo the average
            (loss * world.size).backward()
            for k, v in stats.items():
                sums[k] = sums[k] + v
            gap_max = max(gap_max, mb_gap_max)
        grad_norms.append(optimizer_step(model, optimizer, cfg.grad_clip))
    return update_stats(world.sum_named(sums), world.max([gap_max])[0], grad_norms, cfg)


def micro_batch_loss(model, mb, normalizer, cfg: UpdateSettings, world, share, ref_model=None):
    """One micro-batch's loss (its share of the global token-mean) and its named stats, summed by the caller."""
    batch, R, mask = batch_of(mb, cfg, world, share)  # mask (B, R)
    logp, ent = response_logprobs(model, batch, R, cfg.temperature, want_entropy=True)   # (B, R)
    old = logp.detach() if cfg.mini_batches == 1 else torch.nn.utils.rnn.pad_sequence(
        [s.old_logp if s.old_logp is not None else torch.zeros(len(s.response)) for s in mb],
        batch_first=True).to(world.device)[:, :R]
    adv = _advantages(mb, R, world.device)  # (B,) or (B, R)
    gap, gap_max, tis_w = _sampler_gap(mb, old, mask, cfg.tis_cap)  # named sums, (), (B, R)
    # TIS: tis_w >= 0 factors out of max(-A rho, -A clip(rho)) and of the dual clip's min(., -A c), so scaling
    # A by tis_w scales each token's loss (and gradient) by it and leaves which tokens are clipped unchanged.
    if cfg.tis_cap > 0:
        adv = (adv[:, None] if adv.dim() == 1 else adv) * tis_w  # (B, R)
    loss, clip_stats = policy_loss(logp, old, adv, mask, cfg.clip_low, cfg.clip_high, cfg.clip_c, cfg.loss_agg,
                                   normalizer)
    stats = dict(gap)
    if ref_model is not None:
        with torch.no_grad():
            ref, _ = response_logprobs(ref_model, batch, R, cfg.temperature)
        kl = aggregate(kl_penalty(logp, ref, cfg.kl_kind), mask, cfg.loss_agg, normalizer)
        loss = loss + cfg.kl_coef * kl
        stats["kl"] = kl.item()
    stats["loss"] = loss.item()
    if any(s.weight for s in mb):  # a filler (weight 0) trains no token: it must not dilute the averages
        stats.update({k: clip_stats[k] for k in ("clipfrac", "clipfrac_lower", "ppo_kl")},
                     entropy=masked_mean(ent, mask).item(), micro_batches=1)
    return loss, stats, gap_max.item()


def update_stats(summed, gap_max, grad_norms, cfg: UpdateSettings):
    """The step's update stats from the summed ones: loss and kl are sums of globally normalised parts (per
    optimizer update); the AVERAGED ones are means over trained micro-batches; the gap is logged only when the
    sampler's log-probs were given."""
    n = summed["micro_batches"]
    out = {"loss": summed["loss"] / cfg.mini_batches, "kl": summed["kl"] / cfg.mini_batches,
           **({k: summed[k] / n for k in AVERAGED} if n else {}),
           "trained_share": summed["trained"] / max(summed["rollouts"], 1),  # rollouts through the update / all
           "grad_norm": sum(grad_norms) / len(grad_norms),
           "skipped_updates": sum(not math.isfinite(g) for g in grad_norms)}
    if summed["gap_tokens"] > 0:
        out.update(gap_mean=summed["gap_abs"] / summed["gap_tokens"], gap_max=gap_max,
                   gap_kl=summed["gap_k3"] / summed["gap_rows"],
                   **({"tis_weight": summed["tis_weight"] / summed["gap_tokens"]} if cfg.tis_cap > 0 else {}))
    return out


def make_optimizer(model, lr, warmup, betas, weight_decay):
    """AdamW and a linear warm-up over `warmup` steps (a departure from verl: step 1 is at lr / warmup, not 0)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))


def optimizer_step(model, optimizer, grad_clip):
    """Clip and step; a non-finite gradient norm (NaN/Inf loss or overflow) skips the step, so bad
    numbers never reach the weights. Returns the norm (NaN/Inf when skipped)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    norm = (norm.full_tensor() if isinstance(norm, DTensor) else norm).item()  # a DTensor under FSDP2
    if math.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def sft_update(model, optimizer, pairs, cfg: UpdateSettings, world):
    """Cross-entropy on response tokens, token-mean over the whole global batch."""
    n_tok = world.sum([float(sum(len(r) for _, r in pairs))])[0]
    total = 0.0
    samples = [Sample(x, y, 0.0) for x, y in pairs]
    for mb in micro_batches(samples, cfg.micro_batch, cfg.micro_batch_tokens, world):
        batch, R, mask = batch_of(mb, cfg, world, share=False)
        logp, _ = response_logprobs(model, batch, R, 1.0)
        loss = -(logp * mask).sum() / n_tok
        (loss * world.size).backward()
        total += loss.item()
    norm = optimizer_step(model, optimizer, cfg.grad_clip)
    return {"loss": world.sum([total])[0], "grad_norm": norm, "skipped_updates": int(not math.isfinite(norm))}
