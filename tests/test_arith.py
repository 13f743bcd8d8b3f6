"""arith.py: the word-problem generator (seeded, a held-out split), the exact equation checker on tricky texts,
a right answer after a false equation scored as a flawed positive, and one RL step of the toy model on it."""
import json
import math
import random
import time

import pytest

from conftest import score

import arith
import config
import data
import verifier
import fapo
import genrm
import train
from infra import build, fsdp


def first(text):
    return arith.check("", "", fapo.split_steps(text))[0]


# ---- the generator ----


def test_generator_is_seeded_and_well_formed():
    a, b = arith.rows(200, seed=3), arith.rows(200, seed=3)
    assert [r.prompt for r in a] == [r.prompt for r in b] and [r.ground_truth for r in a] == [r.ground_truth for r in b]
    assert [r.prompt for r in arith.rows(50, seed=4)] != [r.prompt for r in a[:50]]
    rng = random.Random(0)
    for _ in range(500):
        p = arith.make_problem(rng)
        assert 2 <= len(p.ops) <= 4 and all(0 <= v <= arith.LEVELS["standard"]["max_value"] for v in p.running_values())
        assert p.text.endswith("have now?") and "\\boxed{}" in arith.problem_row(p).prompt[0]["content"]
        # the worked solution is clean for the checker and boxes the answer the verifier wants
        steps = arith.solution_steps(p)
        assert arith.check(p.text, p.answer, steps)[0] == -1
        assert verifier.verify("\n\n".join(steps), str(p.answer))[0]
        assert len([e for s in steps for e in arith.equations(s)]) == len(p.ops)
    assert {op for p in (arith.make_problem(rng) for _ in range(300)) for op, _ in p.ops} == set("+-*/")


def test_held_out_splits_are_disjoint():
    train_rows, val_rows, test_rows = arith.task_rows(0, 3000, 200)
    questions = [{r.extra_info["question"] for r in rows} for rows in (train_rows, val_rows, test_rows)]
    assert [len(q) for q in questions] == [3000, 200, 200]  # distinct problems
    assert not (questions[0] & questions[1] or questions[0] & questions[2] or questions[1] & questions[2])
    task = arith.ArithTask("policy", 0, eval_prompts=200)
    assert [r.prompt for r in task.rows()[1]] == [r.prompt for r in arith.task_rows(0)[2][:200]]
    val = arith.ArithTask("policy", 0, eval_prompts=200, test="arith-val").rows()[1]
    assert [r.prompt for r in val] == [r.prompt for r in arith.task_rows(0)[1][:200]]
    assert arith.ArithTask("policy", 0, test="none").rows()[1] == []


@pytest.mark.parametrize("level", sorted(arith.LEVELS))
def test_levels_keep_their_bounds(level):
    rng, lv = random.Random(5), arith.LEVELS[level]
    for _ in range(300):
        p = arith.make_problem(rng, level)
        assert lv["min_ops"] <= len(p.ops) <= lv["max_ops"] and p.start <= lv["max_start"]
        assert all(0 <= v <= lv["max_value"] for v in p.running_values())
        assert arith.check(p.text, p.answer, arith.solution_steps(p))[0] == -1


def test_sft_examples_are_worked_solutions():
    rng = random.Random(1)
    prompt, target = arith.ArithTask("policy", 0).sft_example(rng)
    assert prompt[0]["role"] == "user" and target.endswith("}.") and arith.check("", "", fapo.split_steps(target))[0] == -1
    flawed = [arith.sft_example(rng, flawed_share=1.0)[1] for _ in range(20)]
    assert all(first(t) >= 0 for t in flawed)  # every slipped trace is caught ...
    with pytest.raises(ValueError, match="no critique rows"):
        arith.ArithTask("critic", 0)


# ---- the checker ----


@pytest.mark.parametrize("text,want", [
    ("17 + 25 = 32", 0),
    ("17+25=42", -1),
    ("First 2 + 2 = 4.\n\nThen 17 + 25 = 32.\n\nSo \\boxed{42}", 1),
    ("3 + 4 = 7 * 2 = 14", -1),               # a running calculation: 3 + 4 = 7, then 7 * 2 = 14
    ("3 + 4 = 8 * 2 = 16", 0),                # ... whose first link is false
    ("3 + 4 = 7 = 8", 0),                     # a chain's bare link is checked too
    ("10 \u2212 3 = 7", -1), ("10 \u2212 3 = 6", 0), ("10 \u2013 3 = 6", 0),  # unicode minus, en dash
    ("6 \u00d7 7 = 42", -1), ("6 \\times 7 = 41", 0), ("84 \u00f7 2 = 42", -1),
    ("1,234 + 1,000 = 2,234", -1), ("1,234 + 1,000 = 2,235", 0),  # thousands separators
    ("We have 3, 4 + 1 = 5", -1),             # a comma that is no separator ends the run
    ("12 apples - 7 apples = 2 apples left", 0),  # units between numbers are skipped
    ("$5 + $3 = $8", -1),
    ("2 + 3 * 4 = 14", -1), ("(2 + 3) * 4 = 20", -1), ("(2 + 3) * 4 = 14", 0),  # precedence, parentheses
    ("12 / 4 = 3", -1), ("12 / 5 = 2", 0), ("7 / 0 = 0", 0),   # exact division only
    ("3 - 5 = -2", -1), ("-3 + 5 = 2", -1),
    ("There are no equations in this answer at all.", -1),
    ("The answer is \\boxed{42}.", -1),
    ("In 2024 = 2024 and 20 = 10", -1),       # no operation: a date, a list
    ("2.5 + 1 = 4", -1),                      # decimals are not checked
    ("10% of 50 + 5 = 10", -1),               # the run continues in words: not the claim 50 + 5 = 10
    ("3 x 4 = 13", -1), ("2^3 + 1 = 9", -1), ("3! + 1 = 7", -1),  # notation not read
    ("x = 5 + 2", -1), ("3 + 4 <= 8", -1), ("3 + 4 == 8", -1),
    ("Total is 5. 3 + 4 = 8.", 0),
    ("12 - 7 = 5 so 5 + 2 = 8", 0),
])
def test_checker_on_tricky_texts(text, want):
    got, critique = arith.check("a problem", "42", fapo.split_steps(text))
    assert got == want, (text, critique)
    assert critique.endswith(f"\\boxed{{{want}}}")


def test_checker_critique_names_the_false_equation():
    idx, text = arith.check("", "", ["Start.", "So 17 + 25 = 32, and", "\\boxed{42}"])
    assert idx == 1 and "17 + 25 = 32" in text and "42" in text and len(text) < 200


def test_checker_bounds_huge_inputs_and_never_evals(monkeypatch):
    monkeypatch.setattr("builtins.eval", lambda *a: pytest.fail("eval called"))
    monkeypatch.setattr("builtins.exec", lambda *a: pytest.fail("exec called"))
    t0 = time.time()
    assert first("9" * 200000 + " * " + "9" * 200000 + " = 1") == -1   # too many digits: not checked
    assert first(" * ".join(["99999"] * 5000) + " = 1") == -1            # too many tokens: not checked
    assert first("((((" * 5000 + "1" + "))))" * 5000 + " + 1 = 2") == -1  # too deep: not checked
    assert first("(1 + 1) * " * 30 + "1 = 5") == 0                       # 2**30: checked exactly
    assert first("1 + 1 = 2. " * 20000 + "\n\n2 + 2 = 5") == 1         # long texts: linear
    assert time.time() - t0 < 5
    assert first("__import__('os').system('echo no') + 1 = 2") == -1


def test_a_right_answer_after_a_false_equation_is_a_flawed_positive():
    responses = ["17 + 25 = 32\n\nso the total is \\boxed{42}",     # flawed positive
                 "17 + 25 = 42\n\nso the total is \\boxed{42}",     # clean
                 "17 + 25 = 32\n\nso the total is \\boxed{32}"]     # wrong: not judged
    s = score(responses, ["42"] * 3, ["What is 17 + 25?"] * 3, genrm=genrm.CheckerJudge(arith.check),
                            lam=1.0)
    assert s.correct == [True, True, False] and s.first_error == [0, -1, None]
    assert s.rewards == [0.0, 1.0, -1.0] and s.flagged == [True, False, None] and s.counts["flagged"] == 1


# ---- the trainer ----


def test_toy_model_runs_one_rl_step_on_arith(tmp_path, capsys):
    """train.py --data arith with the toy model: a 1-step cold start on worked solutions, then one FAPO step
    judged by the equation checker, evaluated on the held-out split."""
    out = str(tmp_path / "arith")
    cfg = config.parse_config(["--data", "arith", "--preset", "toy", "--steps", "1", "--sft-steps", "1", "--sft-batch", "2",
                               "--prompts-per-step", "2", "--rollouts", "2", "--max-prompt-len", "256",
                               "--max-response-len", "16", "--eval-prompts", "2", "--eval-samples", "2", "--pass-k", "1",
                               "--no-progress", "--out", out])
    assert cfg.test_data == "arith" and cfg.genrm == "oracle"
    train.train(cfg)
    fsdp.close()  # as train.main does
    rl = [json.loads(line) for line in open(tmp_path / "arith" / "rl" / "metrics.jsonl")]
    step = [m for m in rl if "eval" not in m][-1]
    assert step["step"] == 1 and math.isfinite(step["loss"]) and 0 <= step["trained_share"] <= 1
    assert ("entropy" in step) == (step["trained_share"] > 0)  # nothing trained: no entropy to report
    assert any(m.get("eval") for m in rl)  # the held-out split was evaluated
    assert "error" not in capsys.readouterr().err


def test_cli_accepts_data_arith():
    cfg = config.parse_config(["--data", "arith", "--steps", "1"])
    assert isinstance(build.make_task(cfg), arith.ArithTask) and cfg.genrm == "oracle"


def test_the_split_does_not_follow_the_run_seed():
    """--data arith is a fixed set of problems, like a file: runs of different --seed are scored on the same test
    problems (bench/realmodel.py compares seeds and arms on them)."""
    import config
    import train
    tasks = [build.make_task(config.parse_config(["--data", "arith", "--seed", str(s), "--eval-prompts", "50"]))
             for s in (0, 7)]
    rows = [t.rows() for t in tasks]
    assert [r.prompt for r in rows[0][1]] == [r.prompt for r in rows[1][1]]
    assert [r.prompt for r in rows[0][0][:50]] == [r.prompt for r in rows[1][0][:50]]
