"""fapo.py -- the policy's reward: rule verifier, FAPO's flawed-positive penalty, DAPO's overlong shaping.

FAPO (arXiv 2510.22543, eq. for the flawed-positive-aware reward), per rollout o with answer check
R_rule(o) in {+1, -1} and GenRM verdict "o has a wrong step" (asked only when R_rule = +1):

    R_FAPO(o) = R_rule(o) - lambda * [R_rule(o) = +1 and GenRM flags o]      (lambda = 1 -> 0)
    R(o)      = R_FAPO(o) + min(-(|o| - (L_max - L_buf)) / L_buf * factor, 0) (DAPO overlong, optional)

Under GRPO's group normalisation a flawed positive (0) still beats a wrong answer (-1) while clean
answers are rare, and falls below clean answers (+1) once they are common: the penalty is
self-scheduling. lambda = 0 is the RLVR baseline.

    fapo_reward(correct, flawed, lam)           one rollout
    overlong_penalty(length, max_len, ...)      DAPO's soft length penalty (<= 0)
    score_rollouts(...)                         a batch: verify all, judge the correct ones, count
    rollout_metrics, pass_at_k                  rates for logging and evaluation
    oracle_genrm(problems, gts, step_lists)     the toy task's exact checker, as a GenRM
"""
import math
from dataclasses import dataclass, field

from data import parse_toy_problem, split_steps, toy_first_error, verify

# ---- per-rollout rewards ----


def fapo_reward(correct: bool, flawed: bool | None, lam: float = 1.0) -> float:
    """-1 if wrong; 1 - lam if right but flagged; 1 otherwise. flawed=None (unparseable verdict) is no flag."""
    if not correct:
        return -1.0
    return 1.0 - lam if flawed is True else 1.0


def overlong_penalty(length: int, max_len: int, buffer_len: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment: 0 up to max_len - buffer_len, then linear down to -factor."""
    if buffer_len <= 0:
        return 0.0
    exceed = length - (max_len - buffer_len)
    return min(-exceed / buffer_len * factor, 0.0)


# ---- a batch of rollouts ----


@dataclass
class Scores:
    rewards: list = field(default_factory=list)   # float per rollout, what GRPO normalises
    correct: list = field(default_factory=list)   # bool per rollout, the rule verdict
    flagged: list = field(default_factory=list)   # True/False per rollout, None where not judged or unparseable
    counts: dict = field(default_factory=dict)    # n, correct, judged, flagged, unparseable


def score_rollouts(responses, ground_truths, problems, genrm=None, lam=1.0,
                   lengths=None, max_len=None, overlong_buffer=0, overlong_factor=1.0, oracle=None) -> Scores:
    """Verify every rollout; ask the GenRM only about the correct ones; build the rewards.

    responses, ground_truths, problems: one per rollout (text). genrm: None (the baseline: nobody is
    flagged) or a callable (problems, ground_truths, step_lists) -> list of int | None, the index of the
    first wrong step, -1 for clean, None for an unparseable verdict. lengths (tokens) and max_len
    switch on DAPO's overlong penalty when overlong_buffer > 0. oracle: an exact judge with the same
    interface (the toy checker) to audit the GenRM on the same rollouts: counts oracle_flagged, agree.
    """
    n = len(responses)
    if not (len(ground_truths) == len(problems) == n):
        raise ValueError("responses, ground_truths and problems must have the same length")
    correct = [verify(r, gt)[0] for r, gt in zip(responses, ground_truths)]
    flagged = [None] * n
    judged = [i for i in range(n) if correct[i]] if genrm is not None else []
    asked = ([problems[i] for i in judged], [ground_truths[i] for i in judged],
             [split_steps(responses[i]) for i in judged])
    unparseable = 0
    if judged:
        verdicts = genrm(*asked)
        if len(verdicts) != len(judged):
            raise ValueError(f"GenRM returned {len(verdicts)} verdicts for {len(judged)} rollouts")
        for i, v in zip(judged, verdicts):
            if v is None:
                unparseable += 1
            else:
                flagged[i] = v != -1
    rewards = [fapo_reward(c, f, lam) for c, f in zip(correct, flagged)]
    if overlong_buffer > 0:
        if lengths is None or max_len is None:
            raise ValueError("the overlong penalty needs lengths and max_len")
        rewards = [r + overlong_penalty(L, max_len, overlong_buffer, overlong_factor) for r, L in zip(rewards, lengths)]
    counts = {"n": n, "correct": sum(correct), "judged": len(judged),
              "flagged": sum(f is True for f in flagged), "unparseable": unparseable}
    if oracle is not None:
        truth = [t not in (None, -1) for t in oracle(*asked)] if judged else []
        counts["oracle_flagged"] = sum(truth)
        counts["agree"] = sum(t == (flagged[i] is True) for i, t in zip(judged, truth))
    return Scores(rewards, correct, flagged, counts)


def rollout_metrics(c: dict) -> dict:
    """Rates from (summed) score_rollouts counts: accuracy, flawed ratio = flagged / correct, ..."""
    m = {"acc": c["correct"] / max(c["n"], 1), "flawed_ratio": c["flagged"] / max(c["correct"], 1),
         "unparseable": c["unparseable"] / max(c["judged"], 1)}
    if "agree" in c:
        m.update(oracle_flawed_ratio=c["oracle_flagged"] / max(c["correct"], 1),
                 judge_agreement=c["agree"] / max(c["judged"], 1))
    return m


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ---- the toy task's oracle GenRM ----


def oracle_genrm(problems, ground_truths, step_lists) -> list:
    """The exact step checker of data.py, with the GenRM's interface (None if the problem is not a toy one)."""
    out = []
    for prob, steps in zip(problems, step_lists):
        try:
            out.append(toy_first_error(parse_toy_problem(prob), steps))
        except ValueError:
            out.append(None)
    return out
