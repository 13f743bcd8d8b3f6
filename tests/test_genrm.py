"""Tests for genrm.py: the prompt (byte-exact on the real rows), the strict verdict parser, the reward,
and the metrics."""
import json
import os
import re

import pytest

import critic
import data
import genrm
import processbench
from conftest import SHARED_DATA
from critic import genrm_reward, parse_index
from processbench import critic_metrics

SAMPLE = os.path.join(SHARED_DATA, "fapo-critic-sample.jsonl")


def test_prompt_hand_example():
    got = data.critic_prompt("What is 1+1?", "2", ["1+1=2.", "So \\boxed{2}."])
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
        assert data.critic_prompt(problem, truth, steps) == text
        assert data.parse_critic_prompt(text) == (problem, truth, steps)


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
    assert critic.genrm_reward_parts(0, 3, 4) == (1.0, -0.75)


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
    assert critic.majority_vote([2, 2, -1]) == 2
    assert critic.majority_vote([None, None, 1]) == 1
    assert critic.majority_vote([None]) is None
    assert critic.majority_vote([3, -1]) == -1  # tie -> smallest index


def test_critic_rewards_sums():
    from data import Row
    rows = [Row("p", -1, {"total_steps": 4}), Row("p", 2, {"total_steps": 4}), Row("p", 1, {"total_steps": 4})]
    rewards, sums, preds = critic.critic_rewards(rows, ["\\boxed{-1}", "\\boxed{0}", "no verdict"])
    assert preds == [-1, 0, None]
    assert rewards == [1.0, 0.5, -1.0]
    assert sums == {"n": 3, "outcome": 1.0, "process": -0.5, "verdict_right": 2, "parse_fail": 1, "loc_err": 2.0,
                    "both_flawed": 1}


def test_check_critic_rows():
    from data import Row
    rows = [Row("p", "2", {"total_steps": 3}), Row("p", -1, {"total_steps": 1})]
    data.check_critic_rows(rows, "f.jsonl")
    assert rows[0].ground_truth == 2
    with pytest.raises(ValueError, match=r"f.jsonl: row 1: field 'extra_info.total_steps'"):
        data.check_critic_rows([Row("p", 1, {})], "f.jsonl")
    with pytest.raises(ValueError, match=r"row 2: field 'reward_model.ground_truth'"):
        data.check_critic_rows([Row("p", 0, {"total_steps": 2}), Row("p", 2, {"total_steps": 2})], "f.jsonl")
    with pytest.raises(ValueError, match="ground_truth"):
        data.check_critic_rows([Row("p", "x", {"total_steps": 2})], "f.jsonl")


def test_shared_sample_passes_critic_checks():
    if not os.path.exists(SAMPLE):
        pytest.skip("../shared/data not present")
    from data import load_rows
    rows = load_rows(SAMPLE)
    data.check_critic_rows(rows, SAMPLE)
    assert sum(r.ground_truth == -1 for r in rows) == 50


# ---- bounded verdict parsing ----


def test_parse_index_huge_and_garbage():
    import random
    import time
    assert parse_index("\\boxed{" + "9" * 10_000 + "}", 5) is None  # int() would raise past 4300 digits
    assert parse_index("\\boxed{-" + "1" * 10_000 + "}", 5) is None
    assert parse_index("\\boxed{" + "0" * 10_000 + "3}", 5) == 3  # leading zeros were always fine
    assert parse_index("\\boxed{10}", 11) == 10 and parse_index("\\boxed{11}", 11) is None
    rng = random.Random(0)
    garbage = "".join(rng.choice("\\boxed{}0123456789 x\n") for _ in range(1_000_000))
    for text in [garbage, "\\boxed{" + garbage, "\\boxed{" + "{" * 1_000_000, "\\boxed{" + "{}" * 500_000 + "}"]:
        t = time.perf_counter()
        parse_index(text, 8)
        assert time.perf_counter() - t < 1.0


# ---- pooled vs per-subset ProcessBench F1 ----


def test_pooled_f1_differs_from_subset_average():
    # subset a: one error located, one clean kept -> f1 1; subset b: three errors missed, one clean kept -> f1 0
    preds, labels = [2, -1, 0, 0, 0, -1], [2, -1, 1, 1, 1, -1]
    m = critic_metrics(preds, labels, subsets=["a", "a", "b", "b", "b", "b"])
    assert m["a/pb_f1"] == 1.0 and m["b/pb_f1"] == 0.0 and m["avg_f1"] == 0.5
    # pooled: errors located 1/4, clean rows kept 2/2 -> 2 * 0.25 * 1 / 1.25 = 0.4 (the official "F1 (PB)")
    assert m["err_loc_acc"] == 0.25 and m["corr_acc"] == 1.0 and m["pb_f1"] == pytest.approx(0.4)
    assert "avg_f1" not in critic_metrics(preds, labels)


def test_pb_subset_by_suffix():
    assert [processbench.pb_subset(s) for s in ["processbench_gsm8k", "PRM/processbench_math", "processbench_omnimath",
                                         "x_olympiadbench", "fapo_critic"]] == [
        "gsm8k", "math", "omnimath", "olympiadbench", "fapo_critic"]


# ---- evaluation files: official format, string labels ----


class ScriptedJudge:
    """Says a fixed index for each prompt (by its problem text)."""
    votes, response_tokens = 1, 0

    def __init__(self, by_problem):
        self.by_problem = by_problem

    def judge_prompts(self, prompts, n_steps):
        return [genrm.Verdict(self.by_problem[data.parse_critic_prompt(p[-1]["content"])[0]]) for p in prompts]


# (problem, subset, label, final answer correct, the judge's index): hand-computed metrics below
CASES = [("p1", "gsm8k", -1, True, -1), ("p2", "gsm8k", 1, True, 1), ("p3", "math", 2, True, -1),
         ("p4", "math", -1, False, 0), ("p5", "omnimath", 0, True, None), ("p6", "omnimath", -1, True, -1)]


def _critic_file(tmp_path, official):
    rows = []
    for problem, subset, label, fc, _ in CASES:
        row = {"data_source": f"processbench_{subset}", "prompt": [{"role": "user", "content": data.critic_prompt(
            problem, "7", ["s0", "s1", "s2"])}]}
        if official:  # label and flag in raw_info, labels as strings, no total_steps (counted from the tags)
            row["extra_info"] = {"raw_info": {"label": str(label), "final_answer_correct": fc}}
        else:  # ours, with string labels
            row["reward_model"] = {"ground_truth": str(label), "style": "rule"}
            row["extra_info"] = {"total_steps": 3, "final_answer_correct": fc}
        rows.append(row)
    path = tmp_path / ("official.jsonl" if official else "ours.jsonl")
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.mark.parametrize("official", [True, False])
def test_evaluate_critic_files(tmp_path, official):
    rows = data.load_critic_rows(_critic_file(tmp_path, official))
    assert [r.ground_truth for r in rows] == [c[2] for c in CASES]
    assert all(r.extra_info["total_steps"] == 3 for r in rows)
    m = genrm.evaluate_rows(ScriptedJudge({c[0]: c[4] for c in CASES}), rows)
    # errors p2 (located), p3 (missed), p5 (unparseable: flagged, not located); clean p1 ok, p4 flagged, p6 ok
    assert m["err_acc"] == pytest.approx(2 / 3) and m["err_loc_acc"] == pytest.approx(1 / 3)
    assert m["corr_acc"] == pytest.approx(2 / 3) and m["pb_f1"] == pytest.approx(4 / 9)
    assert (m["gsm8k/pb_f1"], m["math/pb_f1"], m["omnimath/pb_f1"]) == (1.0, 0.0, 0.0)
    assert m["avg_f1"] == pytest.approx(1 / 3)
    # FlawedPositiveBench: p4 dropped (final answer wrong); flags p2 p5, truth p2 p3 p5
    assert m["n_fp"] == 5 and m["fp_precision"] == 1.0 and m["fp_recall"] == pytest.approx(2 / 3)
    assert m["fp_f1"] == pytest.approx(0.8) and m["fp_acc"] == pytest.approx(4 / 5)
    assert m["unparseable"] == pytest.approx(1 / 6)


def test_main_prints_pooled_and_subset_f1(tmp_path, capsys):
    import toy
    rows = []
    for i, (row, _, _) in enumerate(toy.critic_rows(12, seed=3)):
        rows.append({"data_source": f"processbench_{['gsm8k', 'math', 'omnimath'][i % 3]}", "prompt": row.prompt,
                     "extra_info": {"raw_info": {"label": str(row.ground_truth), "final_answer_correct": True}}})
    path = tmp_path / "official.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    genrm.main(["--model", "oracle", "--data", str(path)])
    out = capsys.readouterr().out
    assert "F1 (PB), pooled over 12 rows" in out and "gsm8k f1" in out and "omnimath f1" in out and "avg f1" in out
    assert json.loads(out.strip().splitlines()[-1])["pb_f1"] == 1.0


def test_check_critic_rows_official_fields():
    from data import Row
    prompt = [{"role": "user", "content": data.critic_prompt("q", "1", ["a", "b"])}]
    r = Row(prompt, 0, {"raw_info": {"label": "-1", "final_answer_correct": False}})
    data.check_critic_rows([r], "f.jsonl")  # raw_info wins, as in the official script; n from the tags
    assert r.ground_truth == -1 and r.extra_info["total_steps"] == 2 and r.extra_info["final_answer_correct"] is False
    with pytest.raises(ValueError, match="final_answer_correct"):
        data.check_critic_rows([Row(prompt, 1, {"final_answer_correct": "yes"})], "f.jsonl")
    with pytest.raises(ValueError, match="ground_truth"):
        data.check_critic_rows([Row(prompt, True, {})], "f.jsonl")
    with pytest.raises(ValueError, match="total_steps"):
        data.check_critic_rows([Row([], 1, {})], "f.jsonl")


@pytest.mark.parametrize("flags, want", [
    ([], dict(temperature=0.6, top_p=0.95, max_tokens=8192)),  # the official validation of FAPO-GenRM-4B
    (["--setting", "greedy"], dict(temperature=0.0, top_p=1.0, max_tokens=1024)),
    (["--setting", "greedy", "--max-new-tokens", "64"], dict(temperature=0.0, top_p=1.0, max_tokens=64))])
def test_genrm_cli_decodes_as_the_paper_validated_unless_told(monkeypatch, capsys, flags, want):
    seen = {}

    def fake_make_judge(spec, **kw):
        seen.update(kw)
        raise SystemExit(0)
    monkeypatch.setattr(genrm, "make_judge", fake_make_judge)
    with pytest.raises(SystemExit):
        genrm.main(["--model", "some/dir", "--data", "toy", "--limit", "2"] + flags)
    assert {k: seen[k] for k in want} == want
    setting = "greedy" if flags else "official"
    assert f"evaluation setting: {setting} (temperature {want['temperature']}" in capsys.readouterr().out
