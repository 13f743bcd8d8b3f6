"""Tests for fapo.py: the per-rollout reward, DAPO's overlong penalty, batch scoring with a GenRM."""
import pytest

from conftest import score
from fapo import fapo_reward, overlong_penalty


def test_fapo_reward():
    assert fapo_reward(False, None) == -1.0
    assert fapo_reward(False, True) == -1.0  # a wrong answer is never lifted or lowered
    assert fapo_reward(True, False) == 1.0
    assert fapo_reward(True, None) == 1.0   # unparseable verdict: not a flag
    assert fapo_reward(True, True) == 0.0   # lambda = 1
    assert fapo_reward(True, True, lam=0.0) == 1.0  # the baseline
    assert fapo_reward(True, True, lam=0.5) == 0.5
    assert fapo_reward(True, True, lam=1.5) == -0.5


def test_overlong_penalty():
    # max 8192, buffer 4096: free up to 4096 tokens, then linear to -1 at 8192
    assert overlong_penalty(100, 8192, 4096) == 0.0
    assert overlong_penalty(4096, 8192, 4096) == 0.0
    assert overlong_penalty(6144, 8192, 4096) == pytest.approx(-0.5)
    assert overlong_penalty(8192, 8192, 4096) == pytest.approx(-1.0)
    assert overlong_penalty(8192, 8192, 4096, factor=0.5) == pytest.approx(-0.5)
    assert overlong_penalty(10, 20, 0) == 0.0


def test_score_rollouts_asks_only_about_correct():
    asked = []

    def genrm(problems, gts, step_lists):
        asked.extend(step_lists)
        return [1, -1, None][: len(step_lists)]

    responses = ["a\n\n\\boxed{3}", "b\n\n\\boxed{4}", "c\n\nd\n\n\\boxed{3}", "\\boxed{3}"]
    s = score(responses, ["3"] * 4, ["p"] * 4, genrm=genrm, lam=1.0)
    assert s.correct == [True, False, True, True]
    assert asked == [["a", "\\boxed{3}"], ["c", "d", "\\boxed{3}"], ["\\boxed{3}"]]
    assert s.flagged == [True, None, False, None]
    assert s.rewards == [0.0, -1.0, 1.0, 1.0]
    assert s.counts == {"n": 4, "correct": 3, "judged": 3, "flagged": 1, "unparseable": 1, "judge_failed": 0}
    assert s.first_error == [1, None, -1, None]
    base = score(responses, ["3"] * 4, ["p"] * 4, genrm=None)
    assert base.rewards == [1.0, -1.0, 1.0, 1.0] and base.counts["judged"] == 0


def test_score_rollouts_overlong_and_bad_genrm():
    s = score(["\\boxed{1}", "\\boxed{2}"], ["1", "1"], ["p", "p"], lengths=[10, 30], max_len=30,
                       overlong_buffer=10)
    assert s.rewards == [1.0, -2.0]
    with pytest.raises(ValueError, match="verdicts"):
        score(["\\boxed{1}"], ["1"], ["p"], genrm=lambda *a: [])


def test_pass_at_k():
    from fapo import pass_at_k
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 2) == 1.0 and pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)
    with pytest.raises(ValueError, match="pass@2"):
        pass_at_k(1, 0, 2)  # pass@2 from one sample is undefined, not 1.0
