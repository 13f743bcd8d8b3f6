"""fapo.py -- the policy's reward: rule verifier, FAPO's flawed-positive penalty, DAPO's overlong shaping.

FAPO (arXiv 2510.22543, the flawed-positive-aware reward), per rollout o with answer check
R_rule(o) in {+1, -1} and GenRM verdict "o has a wrong step" (asked only when R_rule = +1):

    R_FAPO(o) = R_rule(o) - lambda * [R_rule(o) = +1 and GenRM flags o]      (lambda = 1 -> 0)
    R(o)      = R_FAPO(o) + min(-(|o| - (L_max - L_buf)) / L_buf * factor, 0) (DAPO overlong, optional)

Under GRPO's group normalisation a flawed positive (0) still beats a wrong answer (-1) while clean
answers are rare, and falls below clean answers (+1) once they are common: the penalty is
self-scheduling. lambda = 0 is the RLVR baseline.

    fapo_reward(correct, flawed, lam)           one rollout
    overlong_penalty(length, max_len, ...)      DAPO's soft length penalty (<= 0)
    rollout_reward(correct, first_error, ...)   the one place a verdict becomes a reward (fork here)
    request_verdicts(...)                       the one place that decides who is judged: the correct rollouts
    score_rollouts(...)                         a batch: verify all, judge the correct ones, count
    rollout_metrics, rollout_shape, pass_at_k   rates and sums for logging and evaluation
    Judging.failed, Judging.ask_again           the rollouts whose request failed; the same prompts re-asked
    check_verdicts(counts, step)                a GenRM that answers nothing stops the run (after train.py waited)
"""
import math
from dataclasses import dataclass, field

from data import split_steps
from verifier import verify
from genrm import Judge, Pending, as_judge

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


def rollout_reward(correct: bool, first_error: int | None, n_steps: int, lam: float) -> float:
    """The GenRM's verdict as a reward: the one function to change for another penalty.

    first_error: the GenRM's index of the first wrong step (-1 clean; None not judged or no verdict);
    n_steps: the number of steps it was shown. FAPO ignores *where* the error is; step-aware shaping
    (say, a penalty that grows with how early the first error comes) is a change here and nowhere else.
    """
    return fapo_reward(correct, None if first_error is None else first_error != -1, lam)


@dataclass
class Scores:
    rewards: list = field(default_factory=list)      # float per rollout, what GRPO normalises
    correct: list = field(default_factory=list)      # bool per rollout, the rule verdict
    first_error: list = field(default_factory=list)  # GenRM index per rollout (-1 clean), None where not judged
    counts: dict = field(default_factory=dict)       # n, correct, judged, flagged, unparseable, judge_failed, ...
    critiques: list = field(default_factory=list)    # the GenRM's text per rollout ("" where not judged)
    unjudged: list = field(default_factory=list)     # True per rollout sent to the judge that got no verdict
                                                     # (Verdict.error: a failed request, a too-long prompt);
                                                     # train.py holds its group out of the update

    @property
    def flagged(self):
        """True/False per rollout, None where not judged or without a verdict."""
        return [None if e is None else e != -1 for e in self.first_error]


@dataclass
class Judging:
    """A batch's correct rollouts sent to the judge: their rule verdicts, who was sent, their steps, and the
    verdicts on their way (None without a judge). Parts made wave by wave are joined with `+`."""
    correct: list
    judged: list   # indices of the rollouts asked about
    steps: list    # the steps each of them was shown as
    pending: list  # [Pending], one per part
    asked: list = field(default_factory=list)  # (problem, ground truth, response) per judged rollout: to ask again

    def __add__(self, other):
        shift = len(self.correct)
        return Judging(self.correct + other.correct, self.judged + [i + shift for i in other.judged],
                       self.steps + other.steps, self.pending + other.pending, self.asked + other.asked)

    def verdicts(self):
        return [v for p in self.pending for v in p.result()]

    def failed(self) -> list:
        """Positions (into judged) of the verdicts whose request failed (Verdict.error); waits for them."""
        return [k for k, v in enumerate(self.verdicts()) if v.error]

    def ask_again(self, judge: Judge, positions) -> "Judging":
        """The same Judging with the verdicts at `positions` (into judged) asked again: the same prompts, and
        each new verdict put back where its rollout is (verdicts land by position, never by arrival). Waits."""
        old = self.verdicts()
        positions = list(positions)
        new = judge.submit([self.asked[k][0] for k in positions], [self.asked[k][1] for k in positions],
                           [self.steps[k] for k in positions],
                           responses=[self.asked[k][2] for k in positions]).result() if positions else []
        if len(new) != len(positions):
            raise ValueError(f"GenRM returned {len(new)} verdicts for {len(positions)} rollouts")
        for k, v in zip(positions, new):
            old[k] = v
        return Judging(self.correct, self.judged, self.steps, [Pending(lambda: old)], self.asked)


def request_verdicts(responses, ground_truths, problems, judge: Judge | None) -> Judging:
    """Verify every rollout and ask the judge about the correct ones only (a wrong answer's reward is -1
    whatever its steps). Returns at once when the judge works in the background (a served GenRM)."""
    correct = [verify(r, gt)[0] for r, gt in zip(responses, ground_truths)]
    judged = [i for i in range(len(responses)) if correct[i]] if judge is not None else []
    steps = [split_steps(responses[i]) for i in judged]  # n_steps for the reward and the log, whatever the prompt
    pending = [judge.submit([problems[i] for i in judged], [ground_truths[i] for i in judged], steps,
                            responses=[responses[i] for i in judged])] if judged else []
    return Judging(correct, judged, steps, pending, [(problems[i], ground_truths[i], responses[i]) for i in judged])


def score_rollouts(responses, ground_truths, problems, genrm=None, lam=1.0,
                   lengths=None, max_len=None, overlong_buffer=0, overlong_factor=1.0, judging=None) -> Scores:
    """Verify every rollout; ask the GenRM only about the correct ones; build the rewards.

    responses, ground_truths, problems: one per rollout (text). genrm: None (the baseline: nobody is
    flagged) or a judge (genrm.Judge, or a plain fn(problems, ground_truths, step_lists) -> [Verdict | int]).
    judging: verdicts already requested (request_verdicts, wave by wave while decoding); else asked here.
    lengths (tokens) and max_len switch on DAPO's overlong penalty when overlong_buffer > 0. A verdict
    without an index is never a flag: it is counted as unparseable (the GenRM answered nonsense; it
    counts as clean, as officially) or judge_failed (no answer: too long, service down). A judge_failed
    rollout keeps its rule reward here, but is marked in Scores.unjudged: train.py holds its whole group
    out of the update, so it never trains as clean.
    """
    n = len(responses)
    if not (len(ground_truths) == len(problems) == n):
        raise ValueError("responses, ground_truths and problems must have the same length")
    judge = as_judge(genrm)
    judging = judging or request_verdicts(responses, ground_truths, problems, judge)
    correct, verdicts = judging.correct, judging.verdicts()
    if len(verdicts) != len(judging.judged):
        raise ValueError(f"GenRM returned {len(verdicts)} verdicts for {len(judging.judged)} rollouts")
    first_error, critiques, n_steps, unjudged = [None] * n, [""] * n, [0] * n, [False] * n
    counts = {"n": n, "correct": sum(correct), "judged": len(judging.judged), "unparseable": 0, "judge_failed": 0}
    for i, s, v in zip(judging.judged, judging.steps, verdicts):
        first_error[i], critiques[i], n_steps[i], unjudged[i] = v.index, v.text, len(s), bool(v.error)
        if v.index is None:
            counts["judge_failed" if v.error else "unparseable"] += 1
    rewards = [rollout_reward(c, e, k, lam) for c, e, k in zip(correct, first_error, n_steps)]
    if overlong_buffer > 0:
        if lengths is None or max_len is None:
            raise ValueError("the overlong penalty needs lengths and max_len")
        rewards = [r + overlong_penalty(L, max_len, overlong_buffer, overlong_factor) for r, L in zip(rewards, lengths)]
    counts["flagged"] = sum(e not in (None, -1) for e in first_error)
    if judge is not None:
        counts.update(judge.take_counts())  # an audited judge adds its comparison with the checker
    return Scores(rewards, correct, first_error, counts, critiques, unjudged)


def rollout_metrics(c: dict) -> dict:
    """Rates from (summed) score_rollouts counts: accuracy, flawed ratio = flagged / correct, ..."""
    m = {"acc": c["correct"] / max(c["n"], 1), "flawed_ratio": c["flagged"] / max(c["correct"], 1),
         "unparseable": c["unparseable"] / max(c["judged"], 1), "judge_failed": c["judge_failed"] / max(c["judged"], 1)}
    if "parse_disagree" in c:  # verdicts the other --verdict-parse would read differently
        m["parse_disagree"] = c["parse_disagree"] / max(c["judged"], 1)
    if "agree" in c:
        m.update(oracle_flawed_ratio=c["oracle_flagged"] / max(c["correct"], 1),
                 judge_agreement=c["agree"] / max(c["judged"], 1))
    return m


def rollout_shape(scores, lengths, group):
    """Sums for the step's log: groups whose rewards are all equal, and response lengths of correct, wrong and
    flawed (correct but flagged) rollouts."""
    n = len(scores.rewards) // group
    zero_var = sum(len(set(scores.rewards[g * group:(g + 1) * group])) == 1 for g in range(n))
    flawed = [bool(c and f) for c, f in zip(scores.correct, scores.flagged)]
    kinds = {"correct": scores.correct, "wrong": [not c for c in scores.correct], "flawed": flawed}
    out = {"zero_var": float(zero_var), "groups": float(n)}
    for kind, mask in kinds.items():
        out[f"len_{kind}"] = float(sum(L for L, m in zip(lengths, mask) if m))
        out[f"n_{kind}"] = float(sum(mask))
    return out


FAILED_WARN = 0.01  # a step whose failed share of judged rollouts is above this says so


def check_verdicts(tot, step) -> str | None:
    """A GenRM that answers nothing must not turn FAPO into a silent baseline: raises when every verdict of
    the step failed (train.py first waits --genrm-wait for the service); returns a warning when more than 1%
    failed (their groups were held out: tot["groups_unjudged"] when given) or most were unparseable (they
    count as clean). tot: summed counts."""
    if tot["judged"] and tot["judge_failed"] == tot["judged"]:
        raise RuntimeError(f"step {step + 1}: every one of {int(tot['judged'])} GenRM requests failed (no verdict); "
                           "stopping rather than training on the baseline reward. Is the GenRM up?")
    warnings = []
    if tot["judged"] and tot["judge_failed"] > FAILED_WARN * tot["judged"]:
        held = f"; {int(tot['groups_unjudged'])} groups held out of the update" if "groups_unjudged" in tot else ""
        warnings.append(f"warning: step {step + 1}: {int(tot['judge_failed'])} of {int(tot['judged'])} GenRM requests "
                        f"failed (no verdict, > {FAILED_WARN:.0%}){held}")
    if tot["judged"] >= 8 and tot["unparseable"] > tot["judged"] / 2:
        warnings.append(f"warning: step {step + 1}: {int(tot['unparseable'])} of {int(tot['judged'])} GenRM verdicts "
                        "were unparseable (no \\boxed{index}); they count as clean")
    return "\n".join(warnings) or None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples (n = {n})")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)
