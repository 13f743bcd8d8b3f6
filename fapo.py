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
    split_steps(text)                           a response as the GenRM's steps (paragraphs)
    verify_rollouts(responses, ground_truths)   R_rule of every rollout
    request_verdicts(correct, ...)              the one place that decides who is judged: the correct rollouts
    wait_for_verdicts(judging, ...)             a served GenRM's outage waited through, bounded; then stop
    score_rollouts(judging, ...)                a batch's rewards from its verdicts, and its counts
    rollout_metrics, rollout_shape, pass_at_k   rates and sums for logging and evaluation
    check_verdicts(counts, step)                a GenRM that answers nothing stops the run

In a step (train.rl_step): verify_rollouts -> request_verdicts (wave by wave while decoding, with a served
GenRM) -> wait_for_verdicts -> score_rollouts.
"""
import math
import re
import time
from dataclasses import dataclass, field

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
    """A batch's rule verdicts and the verdicts on their way: who was sent to the judge, the steps each was shown
    as, and what to ask again. Parts made wave by wave are joined with `+`."""
    correct: list  # R_rule per rollout
    judged: list   # indices of the rollouts asked about (the correct ones; none without a judge)
    steps: list    # the steps each of them was shown as
    pending: list  # [Pending], one per part
    asked: list = field(default_factory=list)  # (problem, ground truth, response) per judged rollout: to ask again
    judge: Judge | None = None

    def __add__(self, other):
        shift = len(self.correct)
        return Judging(self.correct + other.correct, self.judged + [i + shift for i in other.judged],
                       self.steps + other.steps, self.pending + other.pending, self.asked + other.asked, self.judge)

    def verdicts(self):
        return [v for p in self.pending for v in p.result()]

    def failed(self) -> list:
        """Positions (into judged) of the verdicts whose request failed (Verdict.error); waits for them."""
        return [k for k, v in enumerate(self.verdicts()) if v.error]

    def ask_again(self, positions) -> "Judging":
        """The same Judging with the verdicts at `positions` (into judged) asked again: the same prompts, and
        each new verdict put back where its rollout is (verdicts land by position, never by arrival). Waits."""
        old = self.verdicts()
        positions = list(positions)
        new = self.judge.submit([self.asked[k][0] for k in positions], [self.asked[k][1] for k in positions],
                                [self.steps[k] for k in positions],
                                responses=[self.asked[k][2] for k in positions]).result() if positions else []
        if len(new) != len(positions):
            raise ValueError(f"GenRM returned {len(new)} verdicts for {len(positions)} rollouts")
        for k, v in zip(positions, new):
            old[k] = v
        return Judging(self.correct, self.judged, self.steps, [Pending(lambda: old)], self.asked, self.judge)


def split_steps(text: str) -> list[str]:
    """A response as the GenRM sees it: paragraphs split at blank lines (lines of only whitespace), stripped,
    empties dropped. The GenRM's index points into this list."""
    return [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text) if p.strip()]


def verify_rollouts(responses, ground_truths) -> list[bool]:
    """R_rule: each response's last boxed answer checked against its ground truth (verifier.py)."""
    return [verify(r, gt)[0] for r, gt in zip(responses, ground_truths)]


def request_verdicts(correct, responses, ground_truths, problems, judge) -> Judging:
    """Ask the judge about the correct rollouts only (a wrong answer's reward is -1 whatever its steps).
    judge: None (the baseline: nobody is flagged), a genrm.Judge, or a plain fn(problems, ground_truths,
    step_lists) -> [Verdict | int]. Returns at once when the judge works in the background (a served GenRM)."""
    judge = as_judge(judge)
    judged = [i for i in range(len(responses)) if correct[i]] if judge is not None else []
    steps = [split_steps(responses[i]) for i in judged]  # n_steps for the reward and the log, whatever the prompt
    pending = [judge.submit([problems[i] for i in judged], [ground_truths[i] for i in judged], steps,
                            responses=[responses[i] for i in judged])] if judged else []
    return Judging(list(correct), judged, steps, pending, [(problems[i], ground_truths[i], responses[i]) for i in judged],
                   judge)


def score_rollouts(judging: Judging, lam=1.0, lengths=None, max_len=None, overlong_buffer=0,
                   overlong_factor=1.0) -> Scores:
    """The rewards of a batch from its rule verdicts and GenRM verdicts (waits for them), and its counts.

    lengths (tokens) and max_len switch on DAPO's overlong penalty when overlong_buffer > 0. A verdict
    without an index is never a flag: it is counted as unparseable (the GenRM answered nonsense; it
    counts as clean, as officially) or judge_failed (no answer: too long, service down). A judge_failed
    rollout keeps its rule reward here, but is marked in Scores.unjudged: train.py holds its whole group
    out of the update, so it never trains as clean.
    """
    correct, verdicts, n = judging.correct, judging.verdicts(), len(judging.correct)
    if len(verdicts) != len(judging.judged):
        raise ValueError(f"GenRM returned {len(verdicts)} verdicts for {len(judging.judged)} rollouts")
    first_error, critiques, n_steps, unjudged = [None] * n, [""] * n, [0] * n, [False] * n
    counts = {"n": n, "correct": sum(correct), "judged": len(judging.judged), "unparseable": 0, "judge_failed": 0}
    for i, s, v in zip(judging.judged, judging.steps, verdicts):
        first_error[i], critiques[i], n_steps[i], unjudged[i] = v.first_error, v.text, len(s), bool(v.error)
        if v.first_error is None:
            counts["judge_failed" if v.error else "unparseable"] += 1
    rewards = [rollout_reward(c, e, k, lam) for c, e, k in zip(correct, first_error, n_steps)]
    if overlong_buffer > 0:
        if lengths is None or max_len is None:
            raise ValueError("the overlong penalty needs lengths and max_len")
        rewards = [r + overlong_penalty(L, max_len, overlong_buffer, overlong_factor) for r, L in zip(rewards, lengths)]
    counts["flagged"] = sum(e not in (None, -1) for e in first_error)
    if judging.judge is not None:
        counts.update(judging.judge.take_counts())  # an audited judge adds its comparison with the checker
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


def equal_reward_groups(rewards, group) -> set:
    """The groups (of `group` consecutive rollouts) whose rewards are all equal: no signal for GRPO."""
    return {g for g in range(len(rewards) // group) if len(set(rewards[g * group:(g + 1) * group])) == 1}


def rollout_shape(scores, lengths, group):
    """Sums for the step's log: groups whose rewards are all equal, and response lengths of correct, wrong and
    flawed (correct but flagged) rollouts."""
    n = len(scores.rewards) // group
    zero_var = len(equal_reward_groups(scores.rewards, group))
    flawed = [bool(c and f) for c, f in zip(scores.correct, scores.flagged)]
    kinds = {"correct": scores.correct, "wrong": [not c for c in scores.correct], "flawed": flawed}
    out = {"zero_var": float(zero_var), "groups": float(n)}
    for kind, mask in kinds.items():
        out[f"len_{kind}"] = float(sum(L for L, m in zip(lengths, mask) if m))
        out[f"n_{kind}"] = float(sum(mask))
    return out


# ---- an outage: waited through, bounded ----

WAIT_BACKOFF, WAIT_BACKOFF_MAX = 2.0, 60.0  # seconds before the first re-ask; doubled each time, up to this


def wait_for_verdicts(judging: Judging, world, budget_s, step) -> tuple[Judging, float]:
    """(judging, seconds waited). When every request of a step failed (a GenRM server restarting: an OOM, a
    node drain) and the judge is a served one (judge.background), ask the same prompts again for the failed
    rollouts, with backoff (2 s, doubling, at most 60 s between attempts), one line per attempt on rank 0,
    until some verdict comes back or budget_s (--genrm-wait) is spent (an attempt under way finishes: at most
    (retries + 1) x timeout more); then, with still nothing answered, stop (check_verdicts raises). When only
    some failed, their groups are held out of the update, not asked again (docs/departures.md says why). Every
    rank takes part: one all-reduce per attempt."""
    failed, label = judging.failed(), f"step {step + 1}"
    start, attempt = time.monotonic(), 0
    while True:
        over = time.monotonic() - start >= budget_s or judging.judge is None or not judging.judge.background
        judged, n_failed, over = world.sum([float(len(judging.judged)), float(len(failed)), float(over)])
        if not judged or n_failed < judged or over:
            if attempt:
                what = "the GenRM answered again" if n_failed < judged else f"gave up waiting (--genrm-wait {budget_s:g})"
                world.say(f"{label}: {what} after {time.monotonic() - start:.0f} s ({attempt} attempts); "
                          f"{int(n_failed)} of {int(judged)} requests without a verdict")
            check_verdicts({"judged": judged, "judge_failed": n_failed, "unparseable": 0}, step)  # raises if none
            # answered; its warnings are the step log's (train.step_metrics)
            return judging, time.monotonic() - start if attempt else 0.0
        attempt += 1
        elapsed = time.monotonic() - start
        pause = max(min(WAIT_BACKOFF * 2 ** (attempt - 1), WAIT_BACKOFF_MAX, budget_s - elapsed), 0.0)
        errors = [v.error for v in judging.verdicts() if v.error]
        kinds = {}
        for e in errors:
            kinds[e.split(":")[0]] = kinds.get(e.split(":")[0], 0) + 1
        world.say(f"{label}: all {int(judged)} GenRM requests failed (" + ", ".join(f"{k} {n}" for k, n in kinds.items())
                  + (f"; e.g. {errors[0]}" if errors else "") + f"); waiting for the GenRM: attempt {attempt} in "
                  f"{pause:.0f} s ({elapsed:.0f} of --genrm-wait {budget_s:g} s spent)")
        time.sleep(pause)
        judging = judging.ask_again(failed)
        failed = judging.failed()


FAILED_WARN = 0.01  # a step whose failed share of judged rollouts is above this says so


def check_verdicts(summed, step) -> str | None:
    """A GenRM that answers nothing must not turn FAPO into a silent baseline: raises when every verdict of
    the step failed (wait_for_verdicts first waits --genrm-wait for the service); returns a warning when more than 1%
    failed (their groups were held out: summed["groups_unjudged"] when given) or most were unparseable (they
    count as clean). summed: summed counts."""
    judged, failed = int(summed["judged"]), int(summed["judge_failed"])
    if judged and failed == judged:
        raise RuntimeError(f"step {step + 1}: every one of {judged} GenRM requests failed (no verdict); "
                           "stopping rather than training on the baseline reward. Is the GenRM up?")
    warnings = []
    if judged and failed > FAILED_WARN * judged:
        held = f"; {int(summed['groups_unjudged'])} groups held out of the update" if "groups_unjudged" in summed else ""
        warnings.append(f"warning: step {step + 1}: {failed} of {judged} GenRM requests "
                        f"failed (no verdict, > {FAILED_WARN:.0%}){held}")
    if judged >= 8 and summed["unparseable"] > judged / 2:
        warnings.append(f"warning: step {step + 1}: {int(summed['unparseable'])} of {judged} GenRM verdicts "
                        "were unparseable (no \\boxed{index}); they count as clean")
    return "\n".join(warnings) or None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples (n = {n})")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)
