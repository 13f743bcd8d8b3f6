"""Tests for data.py: row loading, box reading, DAPO normalisation, the verifier, steps."""
import json
import random

import pytest

import data
import verifier
from fapo import split_steps
from verifier import last_boxed, normalize_answer, verify

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
    (lambda r: r.update(prompt=[{"role": "system", "content": "You are helpful."}]), "prompt"),
    (lambda r: r.update(prompt=[{"role": "system", "content": "sys"}, {"role": "user", "content": " "}]), "prompt"),
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


def test_bad_bytes_and_bad_json_name_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes((json.dumps(GOOD) + "\r\n" + json.dumps(GOOD) + "\n").encode() + b'{"prompt": "\xff"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl: row 3: field '<json>': not valid UTF-8 at column 13"):
        data.load_rows(str(p))
    j = tmp_path / "d.json"
    j.write_bytes(b'[\n' + json.dumps(GOOD).encode() + b',\n {"prompt": "caf\xe9"}]')
    with pytest.raises(ValueError, match=r"d\.json: line 3: not valid UTF-8 at column 17"):
        data.load_rows(str(j))
    j.write_text("[\n" + json.dumps(GOOD) + ",\n  {oops}]")
    with pytest.raises(ValueError, match=r"d\.json: line 3, column 4: invalid JSON"):
        data.load_rows(str(j))


def test_problem_text_never_index_errors():
    from data import Row, problem_text
    assert problem_text(Row([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "1")) == "q"
    assert problem_text(Row("plain", "1")) == "plain"
    assert problem_text(Row([{"role": "system", "content": "s"}], "1")) == "s"  # hand-built rows only
    assert problem_text(Row([], "1")) == ""
    assert problem_text(Row("p", "1", {"question": "from extra"})) == "from extra"


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


# ---- parity with DAPO's regex normaliser, and linear time ----


def _dapo_normalize_reference(s: str) -> str:
    """The regex normaliser as DAPO wrote it (and data.py had it): quadratic, kept here as the parity oracle."""
    import re
    s = s.split("=")[-1]
    for before, after in verifier._SUBSTITUTIONS:
        s = s.replace(before, after)
    for expr in verifier._REMOVED_EXPRESSIONS:
        s = s.replace(expr, "")
    s = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s)
    s = re.sub(r"(\\text\{)(.*?)(\})", "\\2", s)
    s = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", s)
    s = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", s)
    s = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", s)
    s = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", s)  # \fracab -> \frac{a}{b}
    s = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", s)  # \sqrta -> \sqrt{a}
    s = s.replace("$", "")
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    return s.strip()


_RICH = list("$\\{}()=,0123456789 \n\rtexbodfracsq.^-ab") + [
    "\\text{", "\\textbf{", "\\overline{", "\\boxed{", "\\frac", "\\sqrt", "\\$", "\\text{and}", "\\text{m}", "mbox{"]
_STRUCTURAL = ["$", "{", "}", "\n", "x", "\\text{", "\\textbf{", "\\overline{", "\\boxed{", "\\"]  # more collisions


def test_normalize_matches_dapo_regexes_on_random_strings():
    rng = random.Random(1234)
    for alphabet in (_RICH, _STRUCTURAL):
        for _ in range(10_000):
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            assert normalize_answer(s) == _dapo_normalize_reference(s), repr(s)


@pytest.mark.parametrize("s", [
    "$a$ $b$", "x$1$2$3\ny$4$", "\\text{a}\\text{b}", "\\text{a\n}b}", "\\text{\\text{a}}", "\\boxed{a}b}\n\\boxed{c}",
    "\\boxed{a\n}", "\\textbf{\\text{x}}", "\\overline{1}\\overline{2", "$\\boxed{\\frac12}$", "\n$$\n", "\\text{",
])
def test_normalize_parity_hand_cases(s):
    assert normalize_answer(s) == _dapo_normalize_reference(s)


@pytest.mark.parametrize("make", [
    lambda n: "1" * n, lambda n: "$" + "x" * n, lambda n: "\\text{" * (n // 6), lambda n: "\\boxed{" * (n // 7),
    lambda n: ("\\text{a" + " " * 50 + "\n") * (n // 58), lambda n: "{" * n, lambda n: "frac" * (n // 4),
    lambda n: "\n" * n, lambda n: "$a$b\n" * (n // 5), lambda n: "\\text{\\textbf{\\overline{\\boxed{" + "\n" * n,
])
def test_verify_is_linear_on_a_million_characters(make):
    import time
    big = make(1_000_000)
    # a 1M-char ground truth (the regexes took minutes at 100k), a 1M-char response, both
    for response, truth in [("\\boxed{1}", big), (big + "\\boxed{1}", "1"), ("\\boxed{" + big, big)]:
        t = time.perf_counter()
        verify(response, truth)
        assert time.perf_counter() - t < 1.0


# ---- ground truths verify cannot match ----


def test_answer_issues():
    assert verifier.answer_issues("27") is None and verifier.answer_issues(27) is None and verifier.answer_issues("-1") is None
    assert verifier.answer_issues("\\frac{1}{2}") is None and verifier.answer_issues("0") is None
    assert "float" in verifier.answer_issues("27.0") and "float" in verifier.answer_issues("-3.00")
    assert "leading zero" in verifier.answer_issues("025")
    assert "empty" in verifier.answer_issues("\\text{}") and "empty" in verifier.answer_issues("cm")
    assert "window" in verifier.answer_issues("7" * 400)
    # each really fails against the answer a model writes
    assert not verify("\\boxed{27}", "27.0")[0] and not verify("\\boxed{25}", "025")[0]


def test_load_rows_warns_once_per_file(tmp_path):
    rows = [{**GOOD, "reward_model": {"ground_truth": gt}} for gt in ["2", "27.0", "5", "025", "4.0", "1.0", "7"]]
    with pytest.warns(data.DataWarning) as w:
        data.load_rows(write_jsonl(tmp_path, rows))
    assert len(w) == 1
    msg = str(w[0].message)
    assert "d.jsonl" in msg and "4 of 7" in msg and "row 2 " in msg and "row 4 " in msg and "row 5 " in msg
    assert "row 6 " not in msg and msg.endswith("...")  # the first three, then "..."
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_rows(write_jsonl(tmp_path, [GOOD], "clean.jsonl"))  # no issues: no warning


def test_canonical_answer():
    c = verifier.canonical_answer
    assert [c("27.0"), c(27.0), c("025"), c("-025"), c("0.00"), c("-0.0"), c("000")] == [
        "27", "27", "25", "-25", "0", "0", "0"]
    assert [c("27"), c(25), c(0.5), c("2.50"), c("x = 5"), c(" 7 ")] == ["27", "25", "0.5", "2.50", "x = 5", " 7 "]


# ---- python data.py prepare ----


PLAIN = [{"problem": "  What is 3^3?  ", "answer": 27.0}, {"problem": "AIME", "answer": "025"},
         {"problem": "Half?", "answer": "\\frac{1}{2}"}, {"problem": "Four", "answer": 4}]


def _official_row(i, rec, source, split):
    """The row the official prepare script (fapo_reasoning/data_process.py) writes for a math record: prompt from
    the stripped question plus the suffix, the answer as text, extra_info {split, index, question as given}."""
    return {"data_source": source, "ability": "Math",
            "prompt": [{"role": "user", "content": rec["problem"].strip() + "\n\nPlease reason step by step, and "
                        "put your final answer within \\boxed{}."}],
            "reward_model": {"style": "rule", "ground_truth": str(rec["answer"])},
            "extra_info": {"split": split, "index": i, "question": rec["problem"]}}


def test_prepare_writes_the_official_rows(tmp_path, capsys):
    src = tmp_path / "amc.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in PLAIN) + "\n")
    out = tmp_path / "verl.jsonl"
    data.main(["prepare", str(src), str(out), "--source", "aime24", "--split", "test"])
    assert "answers as given" in capsys.readouterr().out
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == [_official_row(i, r, "aime24", "test") for i, r in enumerate(PLAIN)]  # field for field
    assert [r["reward_model"]["ground_truth"] for r in written] == ["27.0", "025", "\\frac{1}{2}", "4"]
    pytest.importorskip("pyarrow")
    parquet = data.prepare(str(src), str(tmp_path / "verl.parquet"), "math-dapo", "train")
    assert [r.ground_truth for r in parquet] == ["27.0", "025", "\\frac{1}{2}", "4"]
    assert [r.extra_info for r in parquet] == [_official_row(i, r, "x", "train")["extra_info"] for i, r in enumerate(PLAIN)]


def test_prepare_canonicalizes_only_when_asked(tmp_path, capsys):
    src = tmp_path / "amc.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in PLAIN) + "\n")
    out = tmp_path / "verl.jsonl"
    data.main(["prepare", str(src), str(out), "--source", "amc23", "--split", "test", "--canonicalize"])
    said = capsys.readouterr().out
    assert "4 rows" in said and "canonicalised: 2" in said and "27.0 -> '27'" in said and "'025' -> '25'" in said
    rows = data.load_rows(str(out))
    assert [r.ground_truth for r in rows] == ["27", "25", "\\frac{1}{2}", "4"]
    assert rows[0].prompt == [{"role": "user", "content": "What is 3^3?\n\n" + data.MATH_SUFFIX}]
    assert rows[0].extra_info["question"] == "  What is 3^3?  " and rows[0].data_source == "amc23"
    assert verify("... so \\boxed{27}", rows[0].ground_truth)[0] and verify("\\boxed{25}", rows[1].ground_truth)[0]
    with pytest.raises(ValueError, match=r"amc.jsonl: row 2: field 'answer'"):
        data.prepare_rows([(1, {"problem": "p", "answer": "1"}), (2, {"problem": "p", "answer": True})], "x", "test",
                          path=str(src))


def test_prepare_gpqa_and_cli(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    src = tmp_path / "gpqa.jsonl"
    rec = {"Question": "Which?", "Correct Answer": " right ", "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2",
           "Incorrect Answer 3": "w3"}
    src.write_text("\n".join(json.dumps(rec) for _ in range(8)) + "\n")
    out = tmp_path / "verl.jsonl"
    cmd = [sys.executable, "data.py", "prepare", str(src), str(out), "--split", "test", "--source"]
    done = subprocess.run(cmd + ["gpqa-diamond", "--gpqa"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = data.load_rows(str(out))
    for r in rows:
        text = r.prompt[0]["content"]
        assert text.startswith("Which?\nA. ") and text.endswith(
            "\n\nPlease reason step by step, and put your final answer (only the choice letter) within \\boxed{}.")
        assert f"\n{r.ground_truth}. right\n" in text and r.extra_info["question"] == "Which?"
        assert verify(f"\\boxed{{{r.ground_truth}}}", r.ground_truth)[0]
    assert len({r.ground_truth for r in rows}) > 1  # the right option moves
    bad = subprocess.run(cmd + ["x"], cwd=ROOT, capture_output=True, text=True)  # no --gpqa: no 'problem' field
    assert bad.returncode == 1 and "row 1: field 'problem'" in bad.stderr


# ---- steps ----


def test_split_steps():
    assert split_steps("a\n\nb\n \n\nc\n") == ["a", "b", "c"]
    assert split_steps("a\nb\n\n\n\n  c  ") == ["a\nb", "c"]
    assert split_steps("") == [] and split_steps("\n\n \n") == []
    assert split_steps("x\r\n\r\ny") == ["x", "y"]


# ---- prompts through a chat template: --system-prompt ----

_TEMPLATE = ("{% if messages[0]['role'] != 'system' %}S:default\n{% endif %}"
             "{% for m in messages %}{{ m['role'][0] | upper }}:{{ m['content'] }}\n{% endfor %}A:")


def test_encode_prompt_system_modes():
    import toy
    tok = toy.tokenizer()
    user = [{"role": "user", "content": "What is 2 + 3?"}]
    text = lambda ids: tok.decode(ids)
    tok.chat_template = None
    plain = data.encode_prompt(tok, user, "none")  # no chat template: the messages' text, no system added
    assert text(plain) == text(tok("What is 2 + 3?", add_special_tokens=False)["input_ids"])
    tok.chat_template = _TEMPLATE
    keep, none, own = (data.encode_prompt(tok, user, s) for s in ("keep", "none", "Be brief."))
    assert text(keep) == text(tok("S:default\nU:What is 2 + 3?\nA:", add_special_tokens=False)["input_ids"])
    assert text(none) == text(tok("S:\nU:What is 2 + 3?\nA:", add_special_tokens=False)["input_ids"])
    assert text(own) == text(tok("S:Be brief.\nU:What is 2 + 3?\nA:", add_special_tokens=False)["input_ids"])
    assert len(none) < len(keep)  # the template's default system prompt is gone
    with_system = [{"role": "system", "content": "Mine."}] + user  # a prompt's own system message always stays
    assert len({tuple(data.encode_prompt(tok, with_system, s)) for s in ("keep", "none", "Be brief.")}) == 1
