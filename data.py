"""data.py -- rows in, answers checked, solutions split into steps; plus the built-in toy task.

Everything the rest of the project knows about data lives here, with no model in sight:

    load_rows(path)                 verl-schema rows from .jsonl / .json / .parquet, validated
    last_boxed(text)                content of the last \\boxed{...}
    normalize_answer(s)             DAPO's normalize_final_answer, verbatim semantics
    verify(response, ground_truth)  the paper's rule verifier: +1 iff the normalised answers match
    split_steps(text)               a solution as a list of paragraphs (the GenRM's "steps")
    encode_prompt / encode_rows     prompt token ids through the chat template; over-long rows dropped

and the toy task that lets `torchrun train.py` run a real FAPO experiment on a CPU:

    ToyProblem, make_toy_problem    "8+6-4+9": 2-3 single-digit operations, running value >= 0
    toy_solution(problem, flaw)     one step per operation, then \\boxed{answer}; optionally flawed
    toy_first_error(problem, steps) the exact step checker: first wrong step, or -1 (the oracle GenRM)
    toy_rows(n, seed)               distinct toy problems as verl-style rows
    make_toy_tokenizer()            a small word-level tokenizer with a chat template, built locally

Use: `rows = load_rows("train.parquet"); ok, pred = verify(response_text, rows[0].ground_truth)`.
"""
import json
import os
import random
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


# ---- toy task: multi-step arithmetic with an exact step checker ----
#
# Problem "8+6-4+9". Clean solution, one paragraph per operation, then the answer:
#     8+6=14 / 14-4=10 / 10+9=19 / \boxed{19}
# Flaws keep the final answer right (they are the *flawed positives* FAPO is about):
#     "slip":    one step writes its result off by 1 or 2; the next step carries on from the right value
#     "miscopy": one step copies a wrong operand but writes the right result ("8+7=14" for 8+6)
# A flaw that carries a wrong value forward would change the answer; a tiny model cannot produce it
# with a right answer, so it is not used (see ../shared/TOY-NOTES.md).

TOY_SOURCE = "toy_arith"


@dataclass(frozen=True)
class ToyProblem:
    first: int
    ops: tuple  # ((op, operand), ...), op in "+-"

    @property
    def text(self) -> str:
        return str(self.first) + "".join(f"{op}{b}" for op, b in self.ops)

    def running_values(self) -> list[int]:
        """Value after each operation."""
        vals, v = [], self.first
        for op, b in self.ops:
            v = v + b if op == "+" else v - b
            vals.append(v)
        return vals

    @property
    def answer(self) -> int:
        return self.running_values()[-1]


def make_toy_problem(rng: random.Random, min_ops=2, max_ops=3) -> ToyProblem:
    """Single digits 1-9 joined by +/-; subtraction only where the running value stays >= 0."""
    first = rng.randint(1, 9)
    v, ops = first, []
    for _ in range(rng.randint(min_ops, max_ops)):
        b = rng.randint(1, 9)
        op = rng.choice("+-") if v >= b else "+"
        v = v + b if op == "+" else v - b
        ops.append((op, b))
    return ToyProblem(first, tuple(ops))


def parse_toy_problem(text: str) -> ToyProblem:
    """Inverse of ToyProblem.text; ValueError on anything else (model output is untrusted)."""
    m = re.fullmatch(r"([1-9])((?:[+-][1-9])+)", text.strip())
    if not m:
        raise ValueError(f"not a toy problem: {text!r}")
    return ToyProblem(int(m.group(1)), tuple((t[0], int(t[1])) for t in re.findall(r"[+-][1-9]", m.group(2))))


def toy_solution_steps(p: ToyProblem, flaw=None, flaw_step=0, delta=1) -> list[str]:
    """Steps of a solution; flaw in (None, "slip", "miscopy") applied at operation `flaw_step`."""
    steps, prev = [], p.first
    for k, ((op, b), v) in enumerate(zip(p.ops, p.running_values())):
        shown_b, shown_v = b, v
        if k == flaw_step and flaw == "slip":
            shown_v = v + delta
        elif k == flaw_step and flaw == "miscopy":
            shown_b = b + delta
        steps.append(f"{prev}{op}{shown_b}={shown_v}")
        prev = v  # carry on from the right value: the final answer stays right
    steps.append(f"\\boxed{{{p.answer}}}")
    return steps


def random_toy_flaw(p: ToyProblem, rng: random.Random):
    """(flaw, step, delta) for a flaw that stays well-formed: values >= 0, operands in 1..9."""
    while True:
        flaw = rng.choice(["slip", "miscopy"])
        k = rng.randrange(len(p.ops))
        delta = rng.choice([-2, -1, 1, 2])
        if flaw == "slip" and p.running_values()[k] + delta >= 0:
            return flaw, k, delta
        if flaw == "miscopy" and 1 <= p.ops[k][1] + delta <= 9:
            return flaw, k, delta


def toy_solution(p: ToyProblem, rng: random.Random | None = None, flawed=False) -> str:
    """A solution text (steps joined by blank lines); flawed=True injects one random flaw."""
    flaw, k, delta = random_toy_flaw(p, rng) if flawed else (None, 0, 0)
    return "\n\n".join(toy_solution_steps(p, flaw, k, delta))


_STEP = re.compile(r"([0-9]+)([+-])([0-9]+)=([0-9]+)")


def toy_first_error(p: ToyProblem, steps: list[str]) -> int:
    """The oracle: index of the first wrong step, or -1 when every step is right.

    Step k < n_ops must read `a op b = v` with a the true value before operation k, op and b the
    problem's, and v = a op b; step n_ops must be `\\boxed{answer}`; nothing may follow. A missing step
    is an error at the first missing index (clipped to the last step shown, so the index is always
    valid for the GenRM prompt's paragraphs).
    """
    n = len(p.ops)
    prev = p.first
    for k, ((op, b), v) in enumerate(zip(p.ops, p.running_values())):
        if k >= len(steps):
            return max(len(steps) - 1, 0)
        m = _STEP.fullmatch(steps[k].strip())
        if not m or (int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))) != (prev, op, b, v):
            return k
        prev = v
    if len(steps) <= n:
        return max(len(steps) - 1, 0)
    if steps[n].strip() != f"\\boxed{{{p.answer}}}":
        return n
    return n + 1 if len(steps) > n + 1 else -1


def toy_sft_example(rng: random.Random, flawed_share: float) -> tuple[list, str]:
    """(prompt, solution) for the SFT cold start; the solution is flawed with probability flawed_share."""
    p = make_toy_problem(rng)
    return toy_row(p).prompt, toy_solution(p, rng, flawed=rng.random() < flawed_share)


def toy_row(p: ToyProblem) -> Row:
    """A verl-style row for the toy task: the problem is the whole user message."""
    return Row(prompt=[{"role": "user", "content": p.text}], ground_truth=str(p.answer),
               extra_info={"question": p.text}, data_source=TOY_SOURCE)


def toy_rows(n: int, seed: int, exclude=()) -> list[Row]:
    """n distinct toy problems as rows, none of whose text is in `exclude` (keeps test out of train)."""
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        p = make_toy_problem(rng)
        if p.text not in seen:
            seen.add(p.text)
            out.append(toy_row(p))
    return out


# ---- toy tokenizer: built locally, nothing downloaded ----

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TOY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
# words of the GenRM prompt (genrm.py) and of the chat roles, so the toy GenRM sees real prompts
_TOY_WORDS = (
    "The following is a math problem with its ground truth answer along with an AI solution split into "
    "paragraphs enclosed tags and indexed from Math Problem Ground Truth Solution Your task to review "
    "critique the paragraph by Once you identify error in return index of where earliest occurs "
    "Otherwise which typically denotes not found Please reason step put your final i e boxed "
    "user assistant system ok wrong"
).split()
_TOY_PATTERN = r"\\boxed\{|</?paragraph_\d+>|<\|[a-z_]+\|>| ?[A-Za-z]+|\n\n|."


def make_toy_tokenizer(phrases=(), max_paragraphs=16):
    """A word-level tokenizer: digits and symbols one token each, English words whole (with their
    leading space), and each of `phrases` (the GenRM prompt's fixed sentences) a single token, so the
    toy GenRM reads the real prompt text in ~80 tokens instead of ~190."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n", "\n\n", "\\boxed{"]
    tags = [f"<paragraph_{i}>" for i in range(max_paragraphs)] + [f"</paragraph_{i}>" for i in range(max_paragraphs)]
    words = _TOY_WORDS + [" " + w for w in _TOY_WORDS]  # a word with its leading space is one token
    vocab = {}
    for t in _TOY_SPECIALS + chars + tags + words + list(phrases):
        vocab.setdefault(t, len(vocab))
    pattern = "".join(re.escape(ph) + "|" for ph in sorted(phrases, key=len, reverse=True)) + _TOY_PATTERN
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(_TOY_SPECIALS)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 unk_token="<unk>")
    hf.chat_template = CHAT_TEMPLATE
    return hf
