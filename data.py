"""data.py -- rows in, answers checked, solutions split into steps (real data; the toy task is toy.py).

Everything the rest of the project knows about data lives here, with no model in sight:

    load_rows(path)                 verl-schema rows from .jsonl / .json / .parquet, validated
    last_boxed(text)                content of the last \\boxed{...}
    normalize_answer(s)             DAPO's normalize_final_answer, verbatim semantics
    verify(response, ground_truth)  the paper's rule verifier (R_rule in {+1, -1}): +1 iff the normalised answers match
    split_steps(text)               a solution as a list of paragraphs (the GenRM's "steps")
    encode_prompt / encode_rows     prompt token ids through the chat template; over-long rows dropped

Use: `rows = load_rows("train.parquet"); ok, pred = verify(response_text, rows[0].ground_truth)`.
"""
import json
import os
import re
from dataclasses import dataclass, field

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
    if not any(m["content"].strip() for m in prompt):
        raise _bad(path, i, "prompt", "every message is empty")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _check_row(raw, path, i):
    if not isinstance(raw, dict):
        raise _bad(path, i, "<row>", f"expected an object, got {type(raw).__name__}")
    prompt = _check_prompt(raw.get("prompt"), path, i)
    rm = raw.get("reward_model")
    if not isinstance(rm, dict) or "ground_truth" not in rm or rm["ground_truth"] is None:
        raise _bad(path, i, "reward_model.ground_truth", "missing")
    gt = rm["ground_truth"]
    # bool is an int subclass in Python: reject it explicitly rather than score against "True"
    if isinstance(gt, bool) or not isinstance(gt, (str, int)):
        raise _bad(path, i, "reward_model.ground_truth", f"expected str or int, got {type(gt).__name__}")
    if isinstance(gt, str) and not gt.strip():
        raise _bad(path, i, "reward_model.ground_truth", "empty string")
    extra = raw.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise _bad(path, i, "extra_info", f"expected an object, got {type(extra).__name__}")
    if extra.get("total_steps") is not None:
        n = extra["total_steps"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _bad(path, i, "extra_info.total_steps", f"expected a positive int, got {n!r}")
    source = raw.get("data_source") or "unknown"
    if not isinstance(source, str):
        raise _bad(path, i, "data_source", f"expected str, got {type(source).__name__}")
    return Row(prompt, gt, extra, source)


def _read_raw(path):
    """Yield (row number, raw dict); row numbers are 1-based (the line number for .jsonl)."""
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise _bad(path, i, "<json>", str(e)) from None
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of rows")
        yield from enumerate(data, 1)
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq  # optional: only parquet needs it
        yield from enumerate(pq.read_table(path).to_pylist(), 1)
    else:
        raise ValueError(f"{path}: unknown format (expected .jsonl, .json or .parquet)")


def load_rows(path) -> list[Row]:
    """All rows of a verl-style data file; the first bad row raises ValueError(file, row, field)."""
    path = os.fspath(path)
    rows = [_check_row(raw, path, i) for i, raw in _read_raw(path)]
    if not rows:
        raise ValueError(f"{path}: no rows")
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


def encode_prompt(tokenizer, prompt):
    """Token ids of a prompt, through the chat template when the tokenizer has one."""
    msgs = as_messages(prompt)
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n\n".join(m["content"] for m in msgs)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_rows(tokenizer, rows, max_len):
    """(kept rows, their ids, number dropped): prompts longer than max_len are dropped, never truncated."""
    kept, ids = [], []
    for r in rows:
        x = encode_prompt(tokenizer, r.prompt)
        if len(x) <= max_len:
            kept.append(r)
            ids.append(x)
    return kept, ids, len(rows) - len(kept)


def problem_text(row: Row) -> str:
    """The problem as shown to a GenRM: extra_info.question if present, else the last user message."""
    q = row.extra_info.get("question") or row.extra_info.get("problem")
    if isinstance(q, str) and q.strip():
        return q
    return [m["content"] for m in as_messages(row.prompt) if m["role"] == "user"][-1]


# ---- answer checking (DAPO's math verifier, as FAPO trained with it) ----


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{` in text, read to its balanced closing brace.

    Quirk kept for parity with DAPO's `last_boxed_only_string`: only the *last* `\\boxed{` is looked
    at, so an unclosed last box (a truncated response) yields None even if an earlier box is complete.
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for i in range(start + len("\\boxed"), len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len("\\boxed{"):i]
    return None


_SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]
_REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
    "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
    "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
    r",\!", "{,}", '"', "\\dots",
]


def normalize_answer(s: str) -> str:
    """DAPO's `normalize_final_answer` (Minerva's, Lewkowycz et al. 2022 app. D), same steps, same order.

    Known quirks, kept on purpose so scores are comparable with the paper's: everything before the
    last '=' is dropped ("x=5" -> "5"); the substitutions are plain substring replaces, so "an "/"a "
    are removed inside words ("banana " -> "banan") and unit words are removed anywhere ("cm" in
    "\\mathcm"); "1,000" -> "1000" only when the rest is all digits; no numeric equivalence
    ("0.5" != "\\frac{1}{2}", "10" != "10.0").
    """
    s = s.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        s = s.replace(before, after)
    for expr in _REMOVED_EXPRESSIONS:
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


VERIFY_WINDOW = 300  # characters: DAPO looks only at the tail ("the longest answer in MATH-500 has 159")


def verify(response: str, ground_truth) -> tuple[bool, str]:
    """The paper's rule reward: (correct, normalised prediction).

    Only the last 300 characters count; the last `\\boxed{}` there is the answer ("[INVALID]" when
    none); both sides go through normalize_answer and must be equal as strings. Quirks: a box that
    starts before the 300-character window is invisible; a ground truth written as a box is not
    unboxed (DAPO's default); an empty normalised ground truth never matches (our guard: bad data
    must not turn into +1 -- load_rows already rejects empty ground truths).
    """
    boxed = last_boxed(response[-VERIFY_WINDOW:])
    pred = normalize_answer(boxed if boxed is not None else "[INVALID]")
    gt = normalize_answer(str(ground_truth))
    return (boxed is not None and gt != "" and pred == gt), pred


# ---- steps ----


def split_steps(text: str) -> list[str]:
    """Paragraphs split at blank lines (lines of only whitespace), stripped, empties dropped."""
    return [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text) if p.strip()]
