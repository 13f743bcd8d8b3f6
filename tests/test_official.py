"""The official FAPO code's GenRM behaviour, reproduced (issue 21): the policy-time prompt byte for byte
(--judge-prompt official), the recipe's verdict reading (--verdict-parse official) and its disagreements with
ours, the GenRM's own sampling, the training reward's 300-character window, and the evaluation script's table.

The official code read: verl-recipe fapo/ (reward_fn_reasoning.py, reward_fn_genrm.py) and the FAPO repo
(fapo/fapo_genrm/evaluate_genrm.py). The tests never eval either."""
import hashlib
import json
import math

import pytest

from conftest import score

import critic
import config
import data
import fapo
import genrm
import processbench
import toy
from data import Row

# The recipe's FAPO_GENRM_TEMPLATE, quoted again on its own: a change to data.FAPO_GENRM_TEMPLATE fails here
RECIPE_TEMPLATE = (
    "The following is a math problem with its ground truth answer, along with an AI solution (split into steps):\n\n"
    "[Math Problem]\n\n"
    "{problem}\n\n"
    "[Ground Truth]\n\n"
    "{ground_truth}\n\n"
    "[AI Solution]\n\n"
    "{solution}\n\n"
    "Your task is to review and critique the solution step by step. "
    "Once you identify an error in a step, return the index of the step where the earliest error occurs. "
    "Otherwise, return the index of -1 (which typically denotes 'not found').\n\n"
    "Please reason step by step, put your final answer (i.e., the index) in \\boxed{{}}."
)

# ---- 1. the policy-time prompt ----


def test_template_bytes():
    assert data.FAPO_GENRM_TEMPLATE == RECIPE_TEMPLATE and len(RECIPE_TEMPLATE) == 514
    assert hashlib.sha256(RECIPE_TEMPLATE.encode()).hexdigest() == \
        "a7915dd4d5b92a9979e3d190553e4e498f757ce5be168563bb62d3a9cbb3c8c9"


RESPONSES = ["The answer is 3. So \\boxed{3}", "Step 1: x = 2.\nStep 2: y = 3.\nSo $\\boxed{5}$.",
             "First.\n\nSecond.\n\n\nThird \\boxed{\\frac{1}{2}}", "  leading and trailing whitespace kept  \n\n",
             "<think>\nhmm\n</think>\n\nAnswer: \\boxed{7}", "{solution} {problem} {0} {} {{}} %s", ""]


@pytest.mark.parametrize("response", RESPONSES)
def test_official_prompt_is_the_recipes(response):
    question, gt = "Find $x$ if $x^{2} = 4$ and {x > 0}.", "2"
    prompt = data.official_prompt(question, gt, response)
    assert prompt == RECIPE_TEMPLATE.format(problem=question, ground_truth=gt, solution=response)
    assert "[AI Solution]\n\n" + response + "\n\nYour task is" in prompt and "<paragraph_0>" not in prompt
    assert prompt.endswith("(i.e., the index) in \\boxed{}.")
    assert data.parse_official_prompt(prompt) == (question, gt, response)
    assert data.judge_prompt("official", question, gt, ["ignored"], response) == prompt


def test_judge_prompt_formats():
    assert data.judge_prompt("critic", "P", "G", ["a", "b"], "a\n\nb") == data.critic_prompt("P", "G", ["a", "b"])
    assert "[Ground Truth]\n\n27\n\n" in data.official_prompt("P", 27, "S")  # a non-string truth is str()-ed
    with pytest.raises(ValueError, match="whole response"):
        data.judge_prompt("official", "P", "G", ["a"], None)
    with pytest.raises(ValueError):
        data.judge_prompt("tagged", "P", "G", ["a"], "a")
    with pytest.raises(ValueError):
        genrm.Judge(prompt_format="tagged")


class Recording(genrm.Judge):
    """Says -1 to everything and keeps the prompts it was given."""

    def judge_prompts(self, prompts, n_steps):
        self.seen = list(zip(prompts, n_steps))
        return [genrm.Verdict(-1) for _ in prompts]


def test_fapo_shows_the_official_judge_the_whole_response():
    """fapo hands the responses over: the prompt holds each verbatim, untagged; n_steps still from split_steps."""
    responses = ["  a\n\n b \n\n\\boxed{3}\n", "wrong \\boxed{4}", "one line \\boxed{3}"]
    judge = Recording(prompt_format="official")
    s = score(responses, ["3"] * 3, ["Q raw\n"] * 3, genrm=judge)
    assert judge.seen == [(data.official_prompt("Q raw\n", "3", responses[0]), 3),
                          (data.official_prompt("Q raw\n", "3", responses[2]), 1)]
    assert s.counts["judged"] == 2 and s.rewards == [1.0, -1.0, 1.0]
    critic = Recording()  # the default: today's tagged steps
    score(responses, ["3"] * 3, ["Q"] * 3, genrm=critic)
    assert critic.seen[0][0] == data.critic_prompt("Q", "3", fapo.split_steps(responses[0]))


# ---- 2. the verdict: the recipe's int(box), and where it disagrees with ours ----

# box -> what the recipe reads (int(box); None where int() raises: unflagged), what the strict parser reads at n=5
VERDICTS = [("3", 3, 3), ("-1", -1, -1), ("07", 7, None), ("3.0", None, None), ("1+2", None, None),
            ("99", 99, None), ("-5", -5, None), ("", None, None), (" 3 ", 3, 3), ("+3", 3, 3), ("1_0", 10, None),
            ("\\text{3}", None, None), ("paragraph 3", None, None), ("\u0663", 3, None),
            ("__import__('os').system('x')", None, None), ("9" * 5000, None, None)]


@pytest.mark.parametrize("box, official, strict", VERDICTS)
def test_official_parse_table(box, official, strict):
    text = f"Let me check each step.\nSo the answer is \\boxed{{{box}}}."
    assert critic.parse_official(text) == official
    assert critic.parse_index(text, 5) == strict
    # the recipe's reward: any integer but -1 flags (0.0); what int() refuses stays unflagged (+1, as clean)
    assert fapo.rollout_reward(True, official, 5, 1.0) == (0.0 if official not in (None, -1) else 1.0)


def test_official_parse_box_choice():
    assert critic.parse_official("\\boxed{-1} then \\boxed{2}" + " tail" * 1000) == 2  # no window at policy time
    assert critic.parse_official("\\boxed{2} ... \\boxed{-") is None  # only the last "\boxed{" counts
    assert critic.parse_official("no box") is None


def test_parse_disagree_is_counted_and_logged():
    """A judge reading with one parser counts the verdicts the other would read differently; fapo logs the
    rate over judged rollouts (rollout_metrics), the reward follows the chosen parser."""
    texts = ["\\boxed{99}", "\\boxed{-1}", "\\boxed{3.0}", "\\boxed{1}", "\\boxed{\u0663}"]

    class Scripted(genrm.Judge):
        def judge_prompts(self, prompts, n_steps):
            return [genrm.Verdict(*self.read([t], n)) for t, n in zip(texts, n_steps)]
    responses = ["a\n\nb\n\n\\boxed{1}"] * 5
    for how, flagged, disagree in [("official", [True, False, None, True, True], 2),
                                   ("strict", [None, False, None, True, None], 2)]:
        judge = Scripted(verdict_parse=how)
        judge.counts = {"parse_disagree": 0}
        s = score(responses, ["1"] * 5, ["p"] * 5, genrm=judge)
        assert s.flagged == flagged and s.counts["parse_disagree"] == disagree
        assert fapo.rollout_metrics(s.counts)["parse_disagree"] == pytest.approx(disagree / 5)
        assert judge.take_counts() == {"parse_disagree": 0}  # handed over once, then reset (the same keys)


# ---- votes ----


def test_official_vote_ties_go_to_the_first_seen():
    assert critic.official_vote(["2", "5", "5", "2"]) == "2"
    assert critic.official_vote(["5", "2", "2", "5"]) == "5"
    assert critic.official_vote([None, None, None, "3"]) == "3"
    assert critic.official_vote(["03", "3", "3", "03", "03"]) == "03"  # raw strings: "03" and "3" differ
    assert critic.official_vote([None]) is None


def box(s):
    return f"critique \\boxed{{{s}}}"


def test_vote_official_and_strict():
    tie = [box(5), box(2), box(2), box(5)]  # a 2-2 tie at k = 4
    assert critic.vote(tie, 8, "official") == (5, box(5))  # the first seen
    assert critic.vote(tie, 8, "strict") == (2, box(2))    # the smallest index
    assert critic.vote([box(""), box(""), box(1), "none"], 4, "official") == (None, box(""))  # "" wins, then fails
    assert critic.vote([box(""), box(""), box(1), "none"], 4, "strict")[0] == 1
    assert critic.vote([box(" 3 "), box(3), box(1)], 4, "official")[0] == 3  # the eval script strips the box
    assert critic.vote(["none", "none"], 4, "official") == (None, "none")


# ---- 3. sampling: the GenRM's own when unset ----


def _toy_genrm(tmp_path, **gc):
    from transformers import GenerationConfig
    tok = toy.tokenizer()
    model = toy.build_model(tok, seed=0).eval()
    model.generation_config = GenerationConfig(**gc)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return model, tok


def test_in_process_genrm_samples_with_its_generation_config(tmp_path):
    _toy_genrm(tmp_path, do_sample=True, temperature=0.7, top_p=0.8, top_k=20)  # Qwen3-4B-Instruct-2507's
    judge = genrm.make_judge(str(tmp_path), max_tokens=4, prompt_format="critic")  # sampling flags unset
    assert (judge.kw["temperature"], judge.kw["top_p"], judge.kw["top_k"]) == (0.7, 0.8, 20)
    assert judge.sampling == {"temperature": "0.7 (generation_config)", "top_p": "0.8 (generation_config)",
                              "top_k": "20 (generation_config)"}
    judge = genrm.make_judge(str(tmp_path), max_tokens=4, temperature=0.0, top_k=0)  # a flag given wins
    assert (judge.kw["temperature"], judge.kw["top_p"], judge.kw["top_k"]) == (0.0, 0.8, 0)
    assert judge.sampling["temperature"] == "0.0 (set)"


def test_in_process_genrm_without_sampling_config_gets_the_engine_defaults(tmp_path):
    model, tok = _toy_genrm(tmp_path)  # nothing set: vLLM / SGLang decode at 1.0 / 1.0 / off
    judge = genrm.ModelJudge(model, tok, temperature=None, top_p=None, top_k=None)
    assert (judge.kw["temperature"], judge.kw["top_p"], judge.kw["top_k"]) == (1.0, 1.0, 0)
    assert judge.sampling["temperature"] == "1.0 (engine default)"
    assert genrm.ModelJudge(model, tok).kw["temperature"] == 0.0  # the class default stays greedy


def test_config_defaults_per_preset():
    ap = config.build_parser()
    d = vars(ap.parse_args([]))
    assert (d["judge_prompt"], d["verdict_parse"], d["genrm_temperature"], d["genrm_top_p"], d["genrm_top_k"]) == \
        ("official", "official", None, None, None)
    for name in ("fapo-7b", "fapo-32b", "baseline-7b", "baseline-32b"):
        p = config.PRESETS[name]
        assert p["judge_prompt"] == "official" and p["verdict_parse"] == "official" and "genrm_temperature" not in p
    for name in ("toy", "toy-genrm"):
        assert config.PRESETS[name]["judge_prompt"] == "critic" and config.PRESETS[name]["verdict_parse"] == "strict"
    assert config.PRESETS["toy"]["genrm_temperature"] == 0.0
    cfg = config.parse_config(["--preset", "none", "--genrm", "none"])  # literal defaults validate with None
    assert cfg.genrm_temperature is None and cfg.judge_prompt == "official"
    with pytest.raises(SystemExit, match="genrm-top-p"):
        config.parse_config(["--genrm-top-p", "0"])
    with pytest.raises(SystemExit, match="temperatures"):
        config.parse_config(["--genrm-temperature", "-1"])


# ---- 4. the GenRM training reward reads the last 300 characters ----


def test_critic_reward_window():
    head = "I check each paragraph. The earliest error is in paragraph 2: \\boxed{2}"
    rows = [Row("p", 2, {"total_steps": 5}) for _ in range(4)]
    long_tail = head + "\nSo the final answer is as above." + "x" * 300
    texts = [head + "x" * 291, head + "x" * 292, long_tail, "\\boxed{2}" + "y" * 295]
    rewards, sums, preds = critic.critic_rewards(rows, texts)
    assert preds == [2, None, None, None]  # the box's backslash at char -300; one char later it is out
    assert rewards == [1.0, -1.0, -1.0, -1.0] and sums["parse_fail"] == 3
    assert critic.critic_rewards(rows, texts, window=None)[2] == [2, 2, 2, 2]  # the whole text


# ---- 5. the evaluation script's table ----

# (data_source, label, final_answer_correct, k = 4 critiques) -> the voted verdict (--verdict-parse official)
ROWS = [
    ("PRM/processbench_gsm8k", 2, False, [box(2), box(5), box(5), box(2)], 2),             # 2-2 tie: first seen
    ("PRM/processbench_gsm8k", -1, True, [box(-1)] * 4, -1),
    ("PRM/processbench_gsm8k", 1, True, [box(0), box(0), box(1), "none"], 0),
    ("PRM/processbench_math", -1, True, [box(-1), box(-1), box(2), box(-1)], -1),
    ("PRM/processbench_math", 0, False, [box(0)] * 4, 0),
    ("PRM/processbench_omnimath", 3, True, [box(3)] * 4, 3),
    ("PRM/processbench_omnimath", -1, True, [box("1.0"), box("1.0"), box(-1), "x"], None),  # eval: int(eval) = 1
    ("PRM/processbench_olympiadbench", 1, True, [box(""), box(""), box(1), "none"], None),  # "" wins, fails
    ("PRM/processbench_olympiadbench", -1, True, [box(-1)] * 4, -1),
]


class Voting(genrm.Judge):
    """k scripted critiques per row (by problem text), voted as ModelJudge votes them."""
    votes = 4

    def __init__(self, verdict_parse):
        super().__init__(verdict_parse=verdict_parse)
        self.by_problem = {f"p{i}": r[3] for i, r in enumerate(ROWS)}

    def judge_prompts(self, prompts, n_steps):
        problems = [data.parse_critic_prompt(p[-1]["content"])[0] for p in prompts]
        return [genrm.Verdict(*self.read(self.by_problem[q], n)) for q, n in zip(problems, n_steps)]


def _write_rows(tmp_path):
    lines = [json.dumps({"data_source": src, "prompt": [{"role": "user", "content": data.critic_prompt(
        f"p{i}", "7", ["s0", "s1", "s2", "s3"])}], "extra_info": {"raw_info": {"label": str(label),
                                                                                "final_answer_correct": fc}}})
             for i, (src, label, fc, _, _) in enumerate(ROWS)]
    path = tmp_path / "four_subsets.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_official_table_on_a_four_subset_file(tmp_path):
    rows = data.load_critic_rows(_write_rows(tmp_path))
    m = genrm.evaluate_rows(Voting("official"), rows)
    assert list(m["official"]) == ["PRM"]
    g = m["official"]["PRM"]
    assert g["count"] == 9 and g["err_acc"] == 1.0  # None counts as flagged
    assert (g["err_loc_acc"], g["corr_acc"], g["pb_f1"]) == pytest.approx((3 / 5, 3 / 4, 2 / 3))
    # endswith: "math" holds the omnimath rows too (err 0->0, 3->3 located; clean -1 kept, the omnimath one not)
    assert (g["gsm8k_f1"], g["math_f1"], g["olympiadbench_f1"], g["omnimath_f1"]) == pytest.approx((2 / 3, 2 / 3, 0, 0))
    assert g["avg_f1"] == pytest.approx(1 / 3)
    assert (g["fp_precision"], g["fp_recall"], g["fp_f1"], g["fp_acc"]) == pytest.approx((3 / 4, 1.0, 6 / 7, 6 / 7))
    # ours beside it: pooled over every row (one group: the same F1), each row in one subset (math 1.0 alone)
    assert m["pb_f1"] == pytest.approx(2 / 3) and m["math/pb_f1"] == 1.0 and m["omnimath/pb_f1"] == 0.0
    assert m["avg_f1"] == pytest.approx((2 / 3 + 1 + 0 + 0) / 4)
    assert m["unparseable"] == pytest.approx(2 / 9)
    out = processbench.report(m)
    assert "official script, group 'PRM' (9 rows" in out and "avg f1 (mean of the 4 subset f1s)" in out
    assert "F1 (PB), pooled over 9 rows" in out
    print("\n" + out)


def test_strict_votes_break_the_tie_differently(tmp_path):
    rows = data.load_critic_rows(_write_rows(tmp_path))
    ours = genrm.evaluate_rows(Voting("strict"), rows)
    # strict: the 2-2 tie goes to 2 (smallest) as well here; row p6's "1.0" loses to -1 (one parseable vote),
    # row p7's "" is no vote, so 1 wins
    g = ours["official"]["PRM"]
    assert g["corr_acc"] == 1.0 and g["err_loc_acc"] == pytest.approx(4 / 5)


def test_official_groups_and_branches():
    ds = ["PRM/processbench_gsm8k", "processbench_gsm8k", "PRM_v2/a/gsm8k", "processbench_gsm8k", "PRM/x"]
    m = processbench.official_metrics(ds, [-1, 2, -1, -1, 1], [True] * 5, [-1, 0, -1, 1, 1])
    assert list(m) == ["PRM", "processbench_gsm8k", "PRM_v2"]  # split("/")[0], first-seen order
    assert m["PRM"]["count"] == 2
    orm = m["processbench_gsm8k"]  # no "PRM" in the name: outcome verdicts, 0 = wrong, 1 = right
    assert "pb_f1" not in orm and orm["err_acc"] == 1.0 and orm["corr_acc"] == 1.0 and orm["fp_acc"] == 1.0
    g = m["PRM_v2"]  # subsets missing: their f1 and the average are nan; nothing flagged: precision nan
    assert math.isnan(g["math_f1"]) and math.isnan(g["avg_f1"]) and math.isnan(g["fp_precision"])
    assert "nan" in processbench.report({"official": m, "n_err": 0, "n_corr": 0, "n_fp": 0})
