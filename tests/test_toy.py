"""Tests for toy.py: the task, its exact checker (the oracle GenRM), the audit of a learned GenRM against
it, the toy critique rows and checker-written critiques, the tokenizer, the model."""
import json
import random

import pytest

import data
import genrm
import toy
from fapo import split_steps
from verifier import verify
from critic import genrm_reward, parse_index


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
    got = genrm.CheckerJudge(toy.check)(["8+6-4+9", "8+6-4+9", "not a problem"], ["19"] * 3,
                            [["8+6=14", "14-4=10", "10+9=19", "\\boxed{19}"],
                             ["8+6=14", "14-4=11", "10+9=19", "\\boxed{19}"], ["x"]])
    assert [v.first_error for v in got] == [-1, 1, None]
    prompts = [data.critic_prompt("8+6", "14", ["8+6=15", "\\boxed{14}"]), "not a GenRM prompt"]
    assert [v.first_error for v in genrm.CheckerJudge(toy.check).judge_prompts(prompts, [2, 1])] == [0, None]


def test_score_rollouts_audits_a_genrm_against_an_oracle():
    from conftest import score
    from fapo import pass_at_k, rollout_metrics
    responses = ["8+6=15\n\n\\boxed{14}", "8+6=14\n\n\\boxed{14}", "8+6=14\n\n\\boxed{14}", "\\boxed{3}"]
    always_clean = lambda problems, gts, steps: [-1] * len(steps)  # noqa: E731
    s = score(responses, ["14"] * 4, ["8+6"] * 4, genrm=genrm.AuditedJudge(always_clean, genrm.CheckerJudge(toy.check)))
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
        assert data.parse_critic_prompt(text) == (p.text, str(p.answer), steps)
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


# ---- the two SFT regimes ----

def test_coupled_regime_is_unchanged():
    """The default regime draws exactly what it drew before regimes existed (values from the parent commit)."""
    import hashlib
    rng = random.Random(16)
    first = [toy.sft_example(rng, 0.3) for _ in range(4)]
    assert [r for _, r in first] == ["6+7=14\n\n14-5=9\n\n9-4=5\n\n\\boxed{5}", "1+5=6\n\n6+6=12\n\n12+5=17\n\n\\boxed{17}",
                                     "5+3=8\n\n8-8=0\n\n\\boxed{0}", "5-5=0\n\n0+5=5\n\n\\boxed{5}"]
    assert toy.sft_example(rng, 0.3)[0] == [{"role": "user", "content": "2+8+7+5"}]
    for regime_args in ((), ("coupled",), ("coupled", 0.9)):  # slip_share means nothing in the coupled regime
        rng = random.Random(16)
        got = [toy.sft_example(rng, 0.3, *regime_args) for _ in range(2000)]
        assert hashlib.sha256(json.dumps(got).encode()).hexdigest() == \
            "61aa614b44b1b7daa80e644ea7c1f6ee916ab32a65285c7be54cf093b3402508"
    with pytest.raises(ValueError):
        toy.sft_example(rng, 0.3, "nope")


def _decoupled_traces(n, flawed_share, slip_share, seed=0):
    """(problem, steps, flawed, final_slip) for n decoupled SFT traces; flawed / final_slip read off the text
    against the clean solution, not taken from the generator."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        prompt, response = toy.sft_example(rng, flawed_share, "decoupled", slip_share)
        p = toy.parse_problem(prompt[0]["content"])
        steps, clean = split_steps(response), toy.solution_steps(p)
        assert len(steps) == len(clean)
        diff = [k for k in range(len(p.ops)) if steps[k] != clean[k]]
        assert len(diff) <= 1, "at most one flawed step"
        for k in diff:  # a miscopied operand in the last step: the result, the only value carried on, stays right
            assert k == len(p.ops) - 1
            assert steps[k].split("=")[1] == clean[k].split("=")[1] and steps[k].split("=")[0] != clean[k].split("=")[0]
        out.append((p, steps, bool(diff), steps[-1] != clean[-1]))
    return out


def test_decoupled_regime_flaws_never_change_the_answer():
    traces = _decoupled_traces(2000, flawed_share=0.3, slip_share=0.0)
    assert 0.25 < sum(f for _, _, f, _ in traces) / len(traces) < 0.35
    for p, steps, flawed, slip in traces:
        assert not slip and verify("\n\n".join(steps), str(p.answer))[0]
        assert toy.first_error(p, steps) == (-1 if not flawed else next(
            k for k, (s, c) in enumerate(zip(steps, toy.solution_steps(p))) if s != c))


def test_decoupled_regime_wrong_answers_are_independent_of_flaws():
    traces = _decoupled_traces(2000, flawed_share=0.3, slip_share=0.2, seed=1)
    flawed = [t for t in traces if t[2]]
    clean = [t for t in traces if not t[2]]
    rate = lambda ts: sum(t[3] for t in ts) / len(ts)  # noqa: E731
    assert 0.25 < len(flawed) / len(traces) < 0.35 and 0.17 < rate(traces) < 0.23
    # independent: the final-slip rate is the same with and without a flaw (2 sd of the difference ~ 0.04)
    assert abs(rate(flawed) - rate(clean)) < 0.05
    for p, steps, is_flawed, slip in traces:
        boxed = int(steps[-1][len("\\boxed{"):-1])
        assert boxed == (p.running_values()[-2] if slip else p.answer)  # a final slip: an early, wrong answer
        # the checker flags exactly the flawed step; a final slip alone is flagged at the answer paragraph
        want = next((k for k, (s, c) in enumerate(zip(steps, toy.solution_steps(p))) if s != c), -1)
        assert toy.first_error(p, steps) == want
        assert verify("\n\n".join(steps), str(p.answer))[0] == (not slip)
