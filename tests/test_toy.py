"""Tests for toy.py: the task, its exact checker (the oracle GenRM), the audit of a learned GenRM against
it, the toy critique rows and checker-written critiques, the tokenizer, the model."""
import json
import random

import pytest

import genrm
import toy
from data import split_steps, verify
from genrm import genrm_reward, parse_index


def test_toy_problem_and_solution():
    rng = random.Random(0)
    for _ in range(300):
        p = toy.make_problem(rng)
        assert 2 <= len(p.ops) <= 3 and all(v >= 0 for v in p.running_values())
        assert toy.parse_problem(p.text) == p
        clean = toy.solution(p)
        assert toy.first_error(p, split_steps(clean)) == -1
        assert verify(clean, str(p.answer))[0]
        flawed = toy.solution(p, rng, flawed=True)
        assert verify(flawed, str(p.answer))[0], "a flaw must keep the final answer right"
        assert 0 <= toy.first_error(p, split_steps(flawed)) < len(p.ops)


def test_toy_first_error_cases():
    p = toy.parse_problem("8+6-4+9")
    assert toy.solution_steps(p) == ["8+6=14", "14-4=10", "10+9=19", "\\boxed{19}"]
    fe = toy.first_error
    assert fe(p, ["8+6=14", "14-4=10", "10+9=19", "\\boxed{19}"]) == -1
    assert fe(p, ["8+6=15", "14-4=10", "10+9=19", "\\boxed{19}"]) == 0   # slip
    assert fe(p, ["8+6=14", "14-4=10", "10+8=19", "\\boxed{19}"]) == 2   # miscopy
    assert fe(p, ["8+6=14", "15-4=11", "11+9=20", "\\boxed{20}"]) == 1   # wrong carried value
    assert fe(p, ["8+6=14", "14-4=10", "\\boxed{10}"]) == 2              # a step missing
    assert fe(p, ["8+6=14", "14-4=10", "10+9=19"]) == 2                  # no answer paragraph
    assert fe(p, ["8+6=14", "14-4=10", "10+9=19", "\\boxed{18}"]) == 3
    assert fe(p, ["8+6=14", "14-4=10", "10+9=19", "\\boxed{19}", "extra"]) == 4
    assert fe(p, []) == 0
    with pytest.raises(ValueError):
        toy.parse_problem("__import__('os')")


def test_toy_tokenizer_roundtrip(tmp_path):
    tok = toy.tokenizer()
    text = "8+6=14\n\n14-4=10\n\n\\boxed{10}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids)[6] == "\n\n"
    chat = tok.apply_chat_template([{"role": "user", "content": "8+6"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\n8+6<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids

def test_oracle_genrm():
    got = toy.OracleJudge()(["8+6-4+9", "8+6-4+9", "not a problem"], ["19"] * 3,
                            [["8+6=14", "14-4=10", "10+9=19", "\\boxed{19}"],
                             ["8+6=14", "14-4=11", "10+9=19", "\\boxed{19}"], ["x"]])
    assert [v.index for v in got] == [-1, 1, None]
    prompts = [genrm.genrm_prompt("8+6", "14", ["8+6=15", "\\boxed{14}"]), "not a GenRM prompt"]
    assert [v.index for v in toy.OracleJudge().judge_prompts(prompts, [2, 1])] == [0, None]


def test_score_rollouts_audits_a_genrm_against_an_oracle():
    from fapo import pass_at_k, rollout_metrics, score_rollouts
    responses = ["8+6=15\n\n\\boxed{14}", "8+6=14\n\n\\boxed{14}", "8+6=14\n\n\\boxed{14}", "\\boxed{3}"]
    always_clean = lambda problems, gts, steps: [-1] * len(steps)  # noqa: E731
    s = score_rollouts(responses, ["14"] * 4, ["8+6"] * 4, genrm=toy.AuditedJudge(always_clean))
    assert s.counts["oracle_flagged"] == 1 and s.counts["agree"] == 2 and s.counts["flagged"] == 0
    m = rollout_metrics(s.counts)
    assert m["oracle_flawed_ratio"] == pytest.approx(1 / 3) and m["judge_agreement"] == pytest.approx(2 / 3)
    assert m["acc"] == 0.75 and m["flawed_ratio"] == 0.0
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0 and pass_at_k(4, 1, 2) == pytest.approx(0.5)

def test_toy_critic_rows_and_critique():
    rows = toy.critic_rows(200, seed=0, flawed_share=0.5)
    labels = [r.ground_truth for r, _, _ in rows]
    assert 0.3 < sum(l != -1 for l in labels) / len(labels) < 0.7
    for row, p, steps in rows:
        text = row.prompt[0]["content"]
        assert genrm.parse_genrm_prompt(text) == (p.text, str(p.answer), steps)
        assert row.extra_info["total_steps"] == len(steps)
        crit = toy.critique(p, steps)
        assert parse_index(crit, len(steps)) == row.ground_truth
        assert genrm_reward(parse_index(crit, len(steps)), row.ground_truth, len(steps)) == 1.0



def test_eval_command_oracle_scores_one(capsys):
    genrm.main(["--model", "oracle", "--data", "toy", "--limit", "60"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["pb_f1"] == 1.0 and last["fp_f1"] == 1.0 and last["n_err"] + last["n_corr"] == 60


def test_model_judge_on_critic_rows(tmp_path):
    tok = toy.tokenizer()
    model = toy.build_model(tok, seed=0).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rows = [r for r, _, _ in toy.critic_rows(6, seed=1)]
    judge = genrm.ModelJudge(model, tok, max_new_tokens=8, votes=2, temperature=1.0)
    m = genrm.evaluate_rows(judge, rows)
    assert m["avg_response_tokens"] > 0 and 0.0 <= m["unparseable"] <= 1.0 and "toy_critic/pb_f1" in m
    genrm.main(["--model", str(tmp_path), "--data", "toy", "--limit", "4", "--max-new-tokens", "4"])
