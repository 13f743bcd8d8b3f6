"""Tests for genrm.py: the prompt (byte-exact on the real rows), the strict verdict parser, the reward,
and the metrics."""
import json
import os
import re

import pytest

import genrm
from conftest import SHARED_DATA
from genrm import critic_metrics, genrm_reward, parse_index

SAMPLE = os.path.join(SHARED_DATA, "fapo-critic-sample.jsonl")


def test_prompt_hand_example():
    got = genrm.genrm_prompt("What is 1+1?", "2", ["1+1=2.", "So \\boxed{2}."])
    want = (
        "The following is a math problem with its ground truth answer, along with an AI solution (split into "
        "paragraphs, enclosed with tags and indexed from 0):\n\n[Math Problem]\n\nWhat is 1+1?\n\n[Ground Truth]"
        "\n\n2\n\n[AI Solution]\n\n<paragraph_0>\n1+1=2.\n</paragraph_0>\n\n<paragraph_1>\nSo \\boxed{2}.\n"
        "</paragraph_1>\n\nYour task is to review and critique the solution paragraph by paragraph. Once you "
        "identify an error in a paragraph, return the index of the paragraph where the earliest error occurs. "
        "Otherwise, return the index of -1 (which typically denotes 'not found').\n\nPlease reason step by step, "
        "put your final answer (i.e., the index) in \\boxed{}."
    )
    assert got == want


@pytest.mark.skipif(not os.path.exists(SAMPLE), reason="../shared/data not present")
def test_all_shared_prompts_reproduced_exactly():
    rows = [json.loads(line) for line in open(SAMPLE, encoding="utf-8")]
    assert len(rows) == 100
    for r in rows:
        text = r["prompt"][0]["content"]
        # pull the pieces out with plain string operations, independent of genrm's own parser
        problem = text.split("[Math Problem]\n\n", 1)[1].split("\n\n[Ground Truth]", 1)[0]
        truth = text.split("[Ground Truth]\n\n", 1)[1].split("\n\n[AI Solution]", 1)[0]
        steps = [s for _, s in re.findall(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", text, re.S)]
        assert len(steps) == r["extra_info"]["total_steps"]
        assert genrm.genrm_prompt(problem, truth, steps) == text
        assert genrm.parse_genrm_prompt(text) == (problem, truth, steps)


@pytest.mark.parametrize("text, n, want", [
    ("... \\boxed{3}", 5, 3), ("\\boxed{-1}", 5, -1), ("\\boxed{ 2 }", 5, 2), ("\\boxed{+2}", 5, 2),
    ("\\boxed{0}", 1, 0), ("\\boxed{5}", 5, None), ("\\boxed{-2}", 5, None), ("\\boxed{3.0}", 5, None),
    ("\\boxed{1+2}", 5, None), ("\\boxed{}", 5, None), ("no box 3", 5, None), ("\\boxed{paragraph 3}", 5, None),
    ("\\boxed{__import__('os').system('rm -rf /')}", 5, None), ("\\boxed{1}\\boxed{2", 5, None),
    ("\\boxed{1} then \\boxed{4}", 5, 4), ("\\boxed{0x1}", 5, None), ("\\boxed{1e0}", 5, None),
    ("\\boxed{٣}", 5, None),  # a non-ASCII digit: int() would accept it, our parser must not
    ("\\boxed{99999999999999999999999}", 5, None),
])
def test_parse_index_strict(text, n, want):
    assert parse_index(text, n) == want


def test_reward_hand_cases():
    assert genrm_reward(None, -1, 4) == -1.0
    assert genrm_reward(None, 2, 4) == -1.0
    assert genrm_reward(-1, -1, 4) == 1.0
    assert genrm_reward(2, -1, 4) == -1.0
    assert genrm_reward(-1, 2, 4) == -1.0
    assert genrm_reward(2, 2, 4) == 1.0
    assert genrm_reward(0, 3, 4) == pytest.approx(1 - 3 / 4)
    assert genrm_reward(5, 1, 7) == pytest.approx(1 - 4 / 7)
    assert genrm.genrm_reward_parts(0, 3, 4) == (1.0, -0.75)


def test_metrics_hand_cases():
    preds = [-1, -1, 2, 1, None, -1, 3]
    labels = [-1, 2, 2, -1, 3, -1, 1]
    m = critic_metrics(preds, labels)
    # error rows: (-1,2) (2,2) (None,3) (3,1): flagged 3/4, located 1/4; clean rows: -1, 1, -1 -> 2/3
    assert m["err_acc"] == pytest.approx(3 / 4) and m["err_loc_acc"] == pytest.approx(1 / 4)
    assert m["corr_acc"] == pytest.approx(2 / 3)
    assert m["pb_f1"] == pytest.approx(2 * 0.25 * (2 / 3) / (0.25 + 2 / 3))
    # flags: F F T T T F T ; truth: F T T F T F T -> tp 3, flags 4, truth 4
    assert m["fp_precision"] == pytest.approx(3 / 4) and m["fp_recall"] == pytest.approx(3 / 4)
    assert m["fp_f1"] == pytest.approx(3 / 4) and m["fp_acc"] == pytest.approx(5 / 7)
    # FlawedPositiveBench counts only rows with a correct final answer
    m2 = critic_metrics(preds, labels, final_correct=[True, True, True, False, False, False, False])
    assert m2["n_fp"] == 3 and m2["fp_precision"] == 1.0 and m2["fp_recall"] == 0.5


def test_metrics_subsets_and_empty():
    preds, labels = [-1, 2, 0, -1], [-1, 2, -1, 1]
    m = critic_metrics(preds, labels, subsets=["a", "a", "b", "b"])
    assert m["a/pb_f1"] == 1.0 and m["b/pb_f1"] == 0.0 and m["pb_f1"] == 0.5
    assert m["b/n_corr"] == 1 and m["b/n_err"] == 1
    e = critic_metrics([], [])
    assert e["pb_f1"] == 0.0 and e["fp_f1"] == 0.0 and e["fp_acc"] == 0.0
    only_clean = critic_metrics([-1, None], [-1, -1])
    assert only_clean["err_acc"] == 0.0 and only_clean["corr_acc"] == 0.5 and only_clean["fp_precision"] == 0.0


def test_majority_vote():
    assert genrm.majority_vote([2, 2, -1]) == 2
    assert genrm.majority_vote([None, None, 1]) == 1
    assert genrm.majority_vote([None]) is None
    assert genrm.majority_vote([3, -1]) == -1  # tie -> smallest index


def test_critic_rewards_sums():
    from data import Row
    rows = [Row("p", -1, {"total_steps": 4}), Row("p", 2, {"total_steps": 4}), Row("p", 1, {"total_steps": 4})]
    rewards, sums, preds = genrm.critic_rewards(rows, ["\\boxed{-1}", "\\boxed{0}", "no verdict"])
    assert preds == [-1, 0, None]
    assert rewards == [1.0, 0.5, -1.0]
    assert sums == {"n": 3, "outcome": 1.0, "process": -0.5, "verdict_right": 2, "parse_fail": 1, "loc_err": 2.0,
                    "both_flawed": 1}


def test_check_critic_rows():
    from data import Row
    rows = [Row("p", "2", {"total_steps": 3}), Row("p", -1, {"total_steps": 1})]
    genrm.check_critic_rows(rows, "f.jsonl")
    assert rows[0].ground_truth == 2
    with pytest.raises(ValueError, match=r"f.jsonl: row 1: field 'extra_info.total_steps'"):
        genrm.check_critic_rows([Row("p", 1, {})], "f.jsonl")
    with pytest.raises(ValueError, match=r"row 2: field 'reward_model.ground_truth'"):
        genrm.check_critic_rows([Row("p", 0, {"total_steps": 2}), Row("p", 2, {"total_steps": 2})], "f.jsonl")
    with pytest.raises(ValueError, match="ground_truth"):
        genrm.check_critic_rows([Row("p", "x", {"total_steps": 2})], "f.jsonl")


def test_shared_sample_passes_critic_checks():
    if not os.path.exists(SAMPLE):
        pytest.skip("../shared/data not present")
    from data import load_rows
    rows = load_rows(SAMPLE)
    genrm.check_critic_rows(rows, SAMPLE)
    assert sum(r.ground_truth == -1 for r in rows) == 50
