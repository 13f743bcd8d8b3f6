"""Tests for data.py: row loading, box reading, DAPO normalisation, the verifier, steps."""
import json
import random

import pytest

import data
from data import last_boxed, normalize_answer, split_steps, verify

# ---- rows ----

GOOD = {"prompt": [{"role": "user", "content": "1+1?"}], "reward_model": {"ground_truth": "2", "style": "rule"},
        "extra_info": {"total_steps": 3}, "data_source": "x"}


def write_jsonl(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(p)


def test_load_jsonl_json_parquet(tmp_path):
    rows = [GOOD, {**GOOD, "prompt": "plain string prompt", "extra_info": None, "data_source": None}]
    r1 = data.load_rows(write_jsonl(tmp_path, rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    r2 = data.load_rows(str(tmp_path / "d.json"))
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([GOOD, GOOD]), str(tmp_path / "d.parquet"))
    r3 = data.load_rows(str(tmp_path / "d.parquet"))
    assert r1 == r2 and r1[0] == r3[0]
    assert r1[0].ground_truth == "2" and r1[0].extra_info["total_steps"] == 3 and r1[0].data_source == "x"
    assert r1[1].prompt == "plain string prompt" and r1[1].extra_info == {} and r1[1].data_source == "unknown"
    assert data.as_messages(r1[1].prompt) == [{"role": "user", "content": "plain string prompt"}]


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("prompt"), "prompt"),
    (lambda r: r.update(prompt="   "), "prompt"),
    (lambda r: r.update(prompt=[]), "prompt"),
    (lambda r: r.update(prompt=[{"role": "user"}]), "prompt[0]"),
    (lambda r: r.update(prompt=7), "prompt"),
    (lambda r: r.pop("reward_model"), "reward_model.ground_truth"),
    (lambda r: r.update(reward_model={"style": "rule"}), "reward_model.ground_truth"),
    (lambda r: r.update(reward_model={"ground_truth": None}), "reward_model.ground_truth"),
    (lambda r: r.update(reward_model={"ground_truth": ""}), "reward_model.ground_truth"),
    (lambda r: r.update(reward_model={"ground_truth": True}), "reward_model.ground_truth"),
    (lambda r: r.update(reward_model={"ground_truth": [1]}), "reward_model.ground_truth"),
    (lambda r: r.update(extra_info={"total_steps": "3"}), "extra_info.total_steps"),
    (lambda r: r.update(extra_info={"total_steps": 0}), "extra_info.total_steps"),
    (lambda r: r.update(extra_info=[1]), "extra_info"),
])
def test_bad_rows_name_file_row_field(tmp_path, mutate, field):
    bad = json.loads(json.dumps(GOOD))
    mutate(bad)
    path = write_jsonl(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(ValueError) as e:
        data.load_rows(path)
    msg = str(e.value)
    assert path in msg and "row 3" in msg and f"'{field}'" in msg


def test_bad_json_line_and_format(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(ValueError, match="row 2"):
        data.load_rows(str(p))
    with pytest.raises(ValueError, match="unknown format"):
        data.load_rows(str(tmp_path / "d.csv"))


def test_shared_critic_sample_loads():
    import os
    from conftest import SHARED_DATA
    path = os.path.join(SHARED_DATA, "fapo-critic-sample.jsonl")
    if not os.path.exists(path):
        pytest.skip("../shared/data not present")
    rows = data.load_rows(path)
    assert len(rows) == 100
    assert all(isinstance(r.ground_truth, int) and r.extra_info["total_steps"] >= 1 for r in rows)
    assert all(-1 <= r.ground_truth < r.extra_info["total_steps"] for r in rows)


# ---- boxes and normalisation ----


def test_last_boxed():
    assert last_boxed("a \\boxed{1} b \\boxed{22}") == "22"
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{{a}{b}}c") == "{a}{b}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{") is None
    # DAPO's quirk: only the last \boxed{ is read, so an unclosed last box hides a complete earlier one
    assert last_boxed("\\boxed{3} then \\boxed{4") is None
    assert last_boxed("\\boxed{}") == ""


@pytest.mark.parametrize("raw, norm", [
    ("19", "19"), (" 19 ", "19"), ("x = 5", "5"), ("1,000", "1000"), ("1,2", "12"), ("(1,2)", "(1,2)"),
    ("\\text{5 cm}", "5"), ("$\\frac12$", "\\frac{1}{2}"), ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\sqrt2", "\\sqrt{2}"), ("90^\\circ", "90"), ("10 dollars", "10"), ("\\$10", "10"),
    ("\\boxed{7}", "7"), ("\\textbf{A}", "A"), ("\\overline{12}", "12"), ("5\\%", "5\\%"),
    ("banana ", "banan"), ("an apple", "apple"), ("a b", "b"), ("[INVALID]", "[INVALID]"), ("0.5", "0.5"), ("\\dfrac{3}{4}", "\\dfrac{3}{4}"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_verify_rule():
    assert verify("so the answer is \\boxed{19}", "19") == (True, "19")
    assert verify("\\boxed{\\frac12}", "\\frac{1}{2}") == (True, "\\frac{1}{2}")
    assert verify("\\boxed{18}", "19") == (False, "18")
    assert verify("19", "19") == (False, "[INVALID]")  # no box, no credit
    assert verify("\\boxed{19}" + "x" * 300, "19")[0] is False  # box outside the 300-char window
    assert verify("x" * 1000 + "\\boxed{19}", "19")[0] is True
    assert verify("\\boxed{7}", 7)[0] is True  # an int ground truth is compared as text
    assert verify("\\boxed{}", " ")[0] is False  # empty == empty must not be +1
    assert verify("\\boxed{[INVALID]}", "19")[0] is False


def test_split_steps():
    assert split_steps("a\n\nb\n \n\nc\n") == ["a", "b", "c"]
    assert split_steps("a\nb\n\n\n\n  c  ") == ["a\nb", "c"]
    assert split_steps("") == [] and split_steps("\n\n \n") == []
    assert split_steps("x\r\n\r\ny") == ["x", "y"]
