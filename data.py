"""data.py -- rows in, prompts out (answers are checked by verifier.py; a solution's steps: fapo.split_steps).

Everything the rest of the project knows about data lives here, with no model in sight:

    load_rows(path)                 verl-schema rows from .jsonl / .json / .parquet, validated
    (verifier.py                    the rule verifier: last_boxed, normalize_answer, verify, answer_issues)
    encode_prompt / encode_rows     prompt token ids through the chat template; over-long rows dropped
    critic_prompt / parse_critic_prompt   the GenRM's user message (FAPO-Critic's format) and its inverse
    official_prompt / parse_official_prompt   the official policy-time judge's message (whole response, untagged)
    judge_prompt(fmt, ...)          the message a judge sends: 'official' or 'critic' (--judge-prompt)
    check_critic_rows / load_critic_rows  critique rows (ours or the official eval format) normalised, checked
    Task, FileTask                  what a run trains on: rows, SFT targets, an exact checker (toy.ToyTask too)
    distinct_rows(n, seed, ...)     rows of distinct generated problems (the built-in tasks' pools)

Use: `rows = load_rows("train.parquet"); ok, pred = verifier.verify(response_text, rows[0].ground_truth)`.
Plain problem/answer rows -> verl rows as the official script writes them (answers as given; --canonicalize
rewrites 27.0 -> 27, 025 -> 25, which the official script does not):

    python data.py prepare aime24.jsonl aime24.parquet --source aime24 --split test [--problem-key problem ...]
    python data.py prepare gpqa_diamond.jsonl gpqa.parquet --source gpqa-diamond --split test --gpqa
"""
import io
import json
import math
import os
import random
import re
import sys
import warnings
from dataclasses import dataclass, field

from verifier import answer_issues, canonical_answer

# ---- rows (verl's schema) ----


@dataclass
class Row:
    """One training row. `prompt` is a list of chat messages or a plain string."""
    prompt: list | str
    ground_truth: str | int  # a math answer (str) or, for critic rows, the first wrong step (int)
    extra_info: dict = field(default_factory=dict)
    data_source: str = "unknown"


def _bad(path, i, fld, why):
    return ValueError(f"{path}: row {i}: field '{fld}': {why}")


def _check_prompt(prompt, path, i):
    if prompt is None:
        raise _bad(path, i, "prompt", "missing")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise _bad(path, i, "prompt", "empty string")
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise _bad(path, i, "prompt", f"expected a non-empty list of messages or a string, got {type(prompt).__name__}")
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _bad(path, i, f"prompt[{j}]", "expected {'role': str, 'content': str}")
    # the policy answers a user message and problem_text shows it to the GenRM: a system-only prompt is no task
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise _bad(path, i, "prompt", "no non-empty user message")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _check_row(raw, path, i):
    if not isinstance(raw, dict):
        raise _bad(path, i, "<row>", f"expected an object, got {type(raw).__name__}")
    prompt = _check_prompt(raw.get("prompt"), path, i)
    extra = raw.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise _bad(path, i, "extra_info", f"expected an object, got {type(extra).__name__}")
    rm = raw.get("reward_model")
    gt = rm.get("ground_truth") if isinstance(rm, dict) else None
    if gt is None and isinstance(extra.get("raw_info"), dict):  # official GenRM eval rows keep the label there
        gt = extra["raw_info"].get("label")
    if gt is None:
        raise _bad(path, i, "reward_model.ground_truth", "missing")
    # bool is an int subclass in Python: reject it explicitly rather than score against "True"
    if isinstance(gt, bool) or not isinstance(gt, (str, int)):
        raise _bad(path, i, "reward_model.ground_truth", f"expected str or int, got {type(gt).__name__}")
    if isinstance(gt, str) and not gt.strip():
        raise _bad(path, i, "reward_model.ground_truth", "empty string")
    if extra.get("total_steps") is not None:
        n = extra["total_steps"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _bad(path, i, "extra_info.total_steps", f"expected a positive int, got {n!r}")
    source = raw.get("data_source") or "unknown"
    if not isinstance(source, str):
        raise _bad(path, i, "data_source", f"expected str, got {type(source).__name__}")
    return Row(prompt, gt, extra, source)


def _utf8(path, raw: bytes, jsonl: bool) -> str:
    """A file's bytes as text; a bad byte raises ValueError naming the file and line (the row, for .jsonl)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        head = raw[:e.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # lines as open() splits them
        line, col = head.count("\n") + 1, len(head) - head.rfind("\n")
        why = f"not valid UTF-8 at column {col} ({e.reason})"
        raise (_bad(path, line, "<json>", why) if jsonl else ValueError(f"{path}: line {line}: {why}")) from None


def _read_raw(path):
    """Yield (row number, raw dict); row numbers are 1-based (the line number for .jsonl)."""
    if path.endswith(".jsonl"):
        with open(path, "rb") as f:
            text = _utf8(path, f.read(), jsonl=True)
        for i, line in enumerate(io.StringIO(text, newline=None), 1):  # universal newlines, as open() reads
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise _bad(path, i, "<json>", str(e)) from None
    elif path.endswith(".json"):
        with open(path, "rb") as f:
            text = _utf8(path, f.read(), jsonl=False)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of rows")
        yield from enumerate(data, 1)
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq  # optional: only parquet needs it
        yield from enumerate(pq.read_table(path).to_pylist(), 1)
    else:
        raise ValueError(f"{path}: unknown format (expected .jsonl, .json or .parquet)")


class DataWarning(UserWarning):
    """Rows that load but will score wrong (ground truths the verifier can never or rarely match)."""


def load_rows(path) -> list[Row]:
    """All rows of a verl-style data file; the first bad row raises ValueError(file, row, field). Ground
    truths verify cannot match (answer_issues) get one DataWarning per file (warnings.warn: filterable)."""
    path = os.fspath(path)
    numbered = [(i, _check_row(raw, path, i)) for i, raw in _read_raw(path)]  # .jsonl: i is the line number
    rows = [r for _, r in numbered]
    if not rows:
        raise ValueError(f"{path}: no rows")
    issues = [(i, why) for i, r in numbered if (why := answer_issues(r.ground_truth))]
    if issues:
        first = ", ".join(f"row {i} ({why})" for i, why in issues[:3])
        warnings.warn(f"{path}: {len(issues)} of {len(rows)} ground truths can (probably) never be matched by "
                      f"verify: {first}{', ...' if len(issues) > 3 else ''}", DataWarning, stacklevel=2)
    return rows


def load_sft_rows(path) -> list[Row]:
    """Rows for supervised fine-tuning: the target response is extra_info.response."""
    rows = load_rows(path)
    for i, r in enumerate(rows, 1):
        if not isinstance(r.extra_info.get("response"), str) or not r.extra_info["response"].strip():
            raise _bad(path, i, "extra_info.response", "missing (the SFT target)")
    return rows


def as_messages(prompt) -> list[dict]:
    """A string prompt becomes one user message; a message list is returned as is."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def encode_prompt(tokenizer, prompt, system="keep"):
    """Token ids of a prompt, through the chat template when the tokenizer has one. system (--system-prompt), for a
    prompt without a system message: "keep" (the template's default, if it adds one), "none" (an empty one, so
    no default is added), or the text of one."""
    msgs = as_messages(prompt)
    if system != "keep" and (system != "none" or tokenizer.chat_template) and not any(m["role"] == "system" for m in msgs):
        msgs = [{"role": "system", "content": "" if system == "none" else system}] + msgs
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n\n".join(m["content"] for m in msgs)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_rows(tokenizer, rows, max_len, system="keep"):
    """(kept rows, their ids, number dropped): prompts longer than max_len are dropped, never truncated."""
    kept, ids = [], []
    for r in rows:
        x = encode_prompt(tokenizer, r.prompt, system)
        if len(x) <= max_len:
            kept.append(r)
            ids.append(x)
    return kept, ids, len(rows) - len(kept)


def problem_text(row: Row) -> str:
    """The problem as shown to a GenRM: extra_info.question if present, else the last user message."""
    q = row.extra_info.get("question") or row.extra_info.get("problem")
    if isinstance(q, str) and q.strip():
        return q
    msgs = as_messages(row.prompt)
    users = [m["content"] for m in msgs if m["role"] == "user"]
    # load_rows guarantees a user message; a Row built by hand may lack one: fall back, never IndexError
    return users[-1] if users else (msgs[-1]["content"] if msgs else "")


# ---- the GenRM's prompt (FAPO-Critic's user message) ----
# The text formats every model sees live in this file: the policy's prompt (encode_prompt), and the GenRM's,
# built from a problem, its ground truth and a solution's steps. genrm.py reads the verdict it produces.

CRITIC_HEAD = ("The following is a math problem with its ground truth answer, along with an AI solution "
               "(split into paragraphs, enclosed with tags and indexed from 0):")
CRITIC_TASK = ("Your task is to review and critique the solution paragraph by paragraph. Once you identify an "
               "error in a paragraph, return the index of the paragraph where the earliest error occurs. "
               "Otherwise, return the index of -1 (which typically denotes 'not found').\n\n"
               "Please reason step by step, put your final answer (i.e., the index) in \\boxed{}.")
PROMPT_PHRASES = (CRITIC_HEAD, CRITIC_TASK, "[Math Problem]", "[Ground Truth]", "[AI Solution]")  # its fixed text


def critic_prompt(problem: str, ground_truth, steps: list[str]) -> str:
    """The user message of FAPO-Critic (identical to the 100 shared training rows): the solution's steps
    tagged <paragraph_i>. (The official policy-time judge sends the response untagged: official_prompt.)"""
    paragraphs = "\n\n".join(f"<paragraph_{i}>\n{s}\n</paragraph_{i}>" for i, s in enumerate(steps))
    return (f"{CRITIC_HEAD}\n\n[Math Problem]\n\n{problem}\n\n[Ground Truth]\n\n{ground_truth}\n\n"
            f"[AI Solution]\n\n{paragraphs}\n\n{CRITIC_TASK}")


def parse_critic_prompt(text: str) -> tuple[str, str, list[str]]:
    """Inverse of critic_prompt: (problem, ground_truth, steps); ValueError if it is not one."""
    m = re.fullmatch(re.escape(CRITIC_HEAD) + r"\n\n\[Math Problem\]\n\n(.*?)\n\n\[Ground Truth\]\n\n(.*?)"
                     r"\n\n\[AI Solution\]\n\n(.*)\n\n" + re.escape(CRITIC_TASK), text, re.S)
    if not m:
        raise ValueError("not a GenRM prompt")
    steps = re.findall(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", m.group(3), re.S)
    return m.group(1), m.group(2), [s for _, s in steps]


# The official recipe's policy-time judge prompt (verl-recipe fapo/reward_fn_reasoning.py FAPO_GENRM_TEMPLATE, the
# same in _remote.py and the FAPO repo): 514 characters, filled with str.format, so "{{}}" renders "{}". It is
# not the GenRM's training prompt: "(split into steps)", "step" for "paragraph", and the response untagged.
FAPO_GENRM_TEMPLATE = (
    "The following is a math problem with its ground truth answer, along with an AI solution (split into steps):\n\n"
    "[Math Problem]\n\n{problem}\n\n[Ground Truth]\n\n{ground_truth}\n\n[AI Solution]\n\n{solution}\n\n"
    "Your task is to review and critique the solution step by step. Once you identify an error in a step, return "
    "the index of the step where the earliest error occurs. Otherwise, return the index of -1 (which typically "
    "denotes 'not found').\n\nPlease reason step by step, put your final answer (i.e., the index) in \\boxed{{}}."
)
JUDGE_PROMPTS = ("official", "critic")  # --judge-prompt


def official_prompt(question: str, ground_truth, response: str) -> str:
    """The official judge's user message: question raw (extra_info["question"]), ground truth as stored, the
    whole decoded response as is (not stripped, split or tagged). One user message, no system prompt."""
    return FAPO_GENRM_TEMPLATE.format(problem=question, ground_truth=ground_truth, solution=response)


def parse_official_prompt(text: str) -> tuple[str, str, str]:
    """Inverse of official_prompt: (question, ground_truth, response); ValueError if it is not one (a field
    holding the template's own section markers reads back ambiguously: this is for test servers)."""
    head, tail = FAPO_GENRM_TEMPLATE.split("{problem}")[0], FAPO_GENRM_TEMPLATE.split("{solution}")[1]
    m = re.fullmatch(re.escape(head) + r"(.*?)\n\n\[Ground Truth\]\n\n(.*?)\n\n\[AI Solution\]\n\n(.*)"
                     + re.escape(tail.replace("{{}}", "{}")), text, re.S)
    if not m:
        raise ValueError("not an official GenRM prompt")
    return m.group(1), m.group(2), m.group(3)


def judge_prompt(fmt: str, problem: str, ground_truth, steps: list[str], response: str | None) -> str:
    """The message a judge sends about one rollout: 'official' (the whole response, untagged: what the official
    run's GenRM saw) or 'critic' (the steps tagged, FAPO-Critic's training format)."""
    if fmt == "critic":
        return critic_prompt(problem, ground_truth, steps)
    if fmt != "official":
        raise ValueError(f"judge prompt must be one of {JUDGE_PROMPTS}, got {fmt!r}")
    if response is None:  # the steps cannot be joined back byte for byte
        raise ValueError("the official judge prompt shows the whole response: pass responses")
    return official_prompt(problem, ground_truth, response)


_INT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take "٣"


def check_critic_rows(rows: list[Row], path: str) -> None:
    """Normalise and check critic rows in place (training and evaluation run the same checks).

    The label is the first wrong step in -1..n-1 with n = extra_info.total_steps. Official eval rows keep
    label and final-answer flag in extra_info.raw_info (those win, as in the official script); a
    strict-integer string label ("-1") becomes an int; a missing total_steps is counted from the prompt's
    <paragraph_i> tags when the prompt is a GenRM prompt; final_answer_correct, if present, must be a bool.
    """
    for i, r in enumerate(rows, 1):
        raw = r.extra_info.get("raw_info")
        if isinstance(raw, dict):
            if raw.get("label") is not None:
                r.ground_truth = raw["label"]
            if "final_answer_correct" in raw:
                r.extra_info["final_answer_correct"] = raw["final_answer_correct"]
        if isinstance(r.ground_truth, str) and _INT.fullmatch(r.ground_truth.strip()):
            r.ground_truth = int(r.ground_truth.strip())
        if r.extra_info.get("total_steps") is None:
            try:
                last = "".join(m["content"] for m in as_messages(r.prompt)[-1:])
                r.extra_info["total_steps"] = len(parse_critic_prompt(last)[2]) or None
            except ValueError:
                pass
        n = r.extra_info.get("total_steps")
        if not isinstance(n, int):
            raise _bad(path, i, "extra_info.total_steps", "missing (a critic row needs it)")
        if isinstance(r.ground_truth, bool) or not isinstance(r.ground_truth, int) or not -1 <= r.ground_truth < n:
            raise _bad(path, i, "reward_model.ground_truth",
                       f"expected the first wrong step in -1..{n - 1}, got {r.ground_truth!r}")
        if not isinstance(r.extra_info.get("final_answer_correct", False), bool):
            raise _bad(path, i, "extra_info.final_answer_correct",
                       f"expected a bool, got {r.extra_info['final_answer_correct']!r}")


def load_critic_rows(path) -> list[Row]:
    """Critique rows (ours or the official eval format) loaded and checked as training checks them."""
    rows = load_rows(path)
    check_critic_rows(rows, os.fspath(path))
    return rows


# ---- tasks: what a run trains on ----


def distinct_rows(n: int, seed: int, make_problem, to_row, exclude=()) -> list[Row]:
    """n rows of distinct generated problems: make_problem(rng) with a seeded rng until n texts are unique and
    none is in `exclude` (keeps a test split out of train); to_row(problem) -> Row. (toy.py, arith.py)"""
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        p = make_problem(rng)
        if p.text not in seen:
            seen.add(p.text)
            out.append(to_row(p))
    return out




class Task:
    """What train.py asks of a task: its rows, the cold start's targets, and an exact checker if it has one.

    kind: "policy" (problems to solve: --task rl / sft) or "critic" (critique rows: --task genrm).
    A task of your own is a subclass (toy.ToyTask is the built-in one), picked in infra.build.make_task; nothing else
    in train.py branches on the task.
    """
    checker = None  # fn(problem, ground_truth, steps) -> (first wrong step or -1, critique text), or None

    def rows(self) -> tuple[list[Row], list[Row]]:
        """(train rows, test rows), unencoded; test may be empty."""
        raise NotImplementedError

    def sft_example(self, rng: random.Random) -> tuple[list | str, str]:
        """(prompt, target response) for one SFT sequence."""
        raise NotImplementedError

    def encode(self, tokenizer, rows, max_len, system="keep"):
        """(rows kept, their prompt ids, how many were dropped): encode_rows (a task may remember it)."""
        return encode_rows(tokenizer, rows, max_len, system)


class FileTask(Task):
    """Rows from files (verl's schema). SFT targets are extra_info.response, checked when SFT needs them."""

    def __init__(self, kind: str, train: str, test: str | None = None, eval_prompts: int = 0, sft: bool = False):
        self.kind, self.train, self.test, self.eval_prompts = kind, train, test, eval_prompts
        self.sft_rows = load_sft_rows(train) if sft else None  # bad rows fail here, before anything is written

    def rows(self):
        load = load_critic_rows if self.kind == "critic" else load_rows
        test = load(self.test)[: self.eval_prompts or None] if self.test else []
        return load(self.train), test

    def sft_example(self, rng):
        row = self.sft_rows[rng.randrange(len(self.sft_rows))]
        return row.prompt, row.extra_info["response"]


# ---- data preparation: python data.py prepare IN.jsonl OUT.parquet --source NAME ----

# The official FAPO data script (fapo/fapo_reasoning/data_process.py in github.com/yyDing1/FAPO; the same
# file is verl's recipe/fapo/prepare_fapo_data.py) builds every math prompt (DAPO-Math-17k, AIME24/25) as
# problem.strip() + "\n\n" + MATH_SUFFIX, and GPQA-Diamond prompts with GPQA_TEMPLATE: the three wrong
# options shuffled, the right one inserted at a random position, the answer its letter.
MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
GPQA_TEMPLATE = ("{Question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n\n"
                 "Please reason step by step, and put your final answer (only the choice letter) within \\boxed{{}}.")
GPQA_KEYS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def _field(rec, key, path, i, number_ok):
    v = rec.get(key)
    if isinstance(v, str) and v.strip() or number_ok and type(v) in (int, float) and math.isfinite(v):  # no bools
        return v
    raise _bad(path, i, key, f"expected a non-empty string{' or a number' * number_ok}, got {v!r:.60}")


def prepare_rows(records, source, split, problem_key="problem", answer_key="answer", gpqa=False, seed=0,
                 path="<input>", canonicalize=False):
    """(verl rows as the official script writes them, [(row number, answer before, after)] canonicalised)
    from (row number, dict) records: the question as given in extra_info (the prompt strips it), the answer as
    text (str() of a number, as the official AIME loader does), extra_info {split, index, question}.
    canonicalize: rewrite answers the verifier could never match (27.0 -> 27; not official). gpqa: GPQA's
    columns (GPQA_KEYS); the official script shuffles the options with the unseeded global RNG, we with
    Random(seed)."""
    rng, rows, changed = random.Random(seed), [], []
    for i, rec in records:
        if not isinstance(rec, dict):
            raise _bad(path, i, "<row>", f"expected an object, got {type(rec).__name__}")
        if gpqa:
            question = _field(rec, "Question", path, i, False)
            options = [str(_field(rec, k, path, i, True)).strip() for k in GPQA_KEYS[2:]]
            rng.shuffle(options)
            gold = rng.randint(0, 3)
            options.insert(gold, str(_field(rec, "Correct Answer", path, i, True)).strip())
            prompt, answer = GPQA_TEMPLATE.format(Question=question, **dict(zip("ABCD", options))), "ABCD"[gold]
        else:
            question, raw = _field(rec, problem_key, path, i, False), _field(rec, answer_key, path, i, True)
            prompt, answer = question.strip() + "\n\n" + MATH_SUFFIX, str(raw)
            if canonicalize and canonical_answer(raw) != answer:
                changed.append((i, raw, canonical_answer(raw)))
                answer = canonical_answer(raw)
        rows.append({"data_source": source, "prompt": [{"role": "user", "content": prompt}],
                     "ability": "General" if gpqa else "Math",
                     "reward_model": {"style": "rule", "ground_truth": answer},
                     "extra_info": {"split": split, "index": len(rows), "question": question}})
    return rows, changed


def prepare(inp, out, source, split, problem_key="problem", answer_key="answer", gpqa=False, seed=0,
            canonicalize=False) -> list[Row]:
    """Plain problem/answer rows (.jsonl/.json/.parquet) -> verl rows in out (.jsonl/.parquet), read back
    through load_rows (which warns of ground truths the verifier can never match); with canonicalize, prints
    how many answers were rewritten, with examples."""
    if not out.endswith((".jsonl", ".parquet")):
        raise ValueError(f"{out}: expected a .jsonl or .parquet output")
    rows, changed = prepare_rows(_read_raw(inp), source, split, problem_key, answer_key, gpqa, seed, inp, canonicalize)
    if out.endswith(".jsonl"):
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), out)
    examples = ", ".join(f"row {i}: {before!r} -> {after!r}" for i, before, after in changed[:3])
    print(f"{inp}: {len(rows)} rows -> {out} (data_source {source!r}, split {split!r}); answers "
          + (f"canonicalised: {len(changed)}" + (f" ({examples}{', ...' if len(changed) > 3 else ''})" if changed else "")
             if canonicalize else "as given (--canonicalize rewrites 27.0 -> 27, 025 -> 25)"))
    return load_rows(out)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="data.py", description="Data tools for FAPO runs.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="plain problem/answer rows -> verl rows with the official FAPO prompt")
    p.add_argument("input", help="plain rows: .jsonl (one object a line), .json (a list) or .parquet")
    p.add_argument("output", help="verl rows: .jsonl or .parquet")
    p.add_argument("--source", required=True, help="data_source of every row (evaluation groups by it), e.g. aime24")
    p.add_argument("--split", required=True, choices=["train", "test"], help="extra_info.split (official: train for "
                   "DAPO-Math-17k, test for AIME and GPQA)")
    p.add_argument("--canonicalize", action="store_true", help="rewrite answers the verifier can never match "
                   "(27.0 -> 27, 025 -> 25); not done by the official script")
    p.add_argument("--problem-key", default="problem")
    p.add_argument("--answer-key", default="answer", help="(a string or a number)")
    p.add_argument("--gpqa", action="store_true", help="GPQA's columns -> the official multiple-choice prompt")
    p.add_argument("--seed", type=int, default=0, help="--gpqa: seed of the option shuffle")
    a = ap.parse_args(argv)
    try:
        prepare(a.input, a.output, a.source, a.split, a.problem_key, a.answer_key, a.gpqa, a.seed, a.canonicalize)
    except (ValueError, OSError) as e:
        sys.exit(f"data.py prepare: {e}")


if __name__ == "__main__":
    main()
