"""arith.py -- a built-in task of word problems: 2-4 integer operations told in sentences, and an exact
equation checker that reads free text (any model's working), usable as the GenRM (`--data arith`).

Like toy.py, a data.Task subclass with everything task-specific here; it imports only data.py.

    "Maya has 12 marbles. She buys 7 more. Then she gives away 5 of them. Then the number of marbles she has
     triples. How many marbles does Maya have now?"                                    answer 42

The generator (make_problem) draws a person, an item, a start of 2-40 and 2-4 operations: + (1-40), - (never
below 0), * (2-5) and / (2-9, exact division only), every value at most 2000. Prompts ask for the working,
one equation a paragraph, and the answer in \\boxed{}. rows(n, seed) is seeded; task_rows holds a held-out
test split (seed + 1) whose problem texts are kept out of the training pool.

check(problem, ground_truth, steps): the first step (paragraph) holding a FALSE equation, or -1 -- what the
FAPO GenRM is asked (the answer itself is the rule verifier's business, so problem and ground truth are not
read). How a step is read (never eval'd; a tokenizer and a recursive-descent parser over integers):
  - numbers: ASCII digits; thousands separators "1,234" (a comma then exactly 3 digits); at most 60 digits
    (longer: the equation is not checked, so cost stays bounded however long the text); "2.5" is a
    decimal and any equation touching one is not checked (integers only);
  - operators + - * / (and their look-alikes: unicode minus and dashes -> -, x-like signs and LaTeX
    \\times \\cdot -> *, \\div -> /), parentheses, unary minus at the start of a side; "=" only (not <=, ==);
  - a side of an equation is a run of numbers, operators and parentheses; a letters-only word right after a
    number is a unit and skipped ("12 apples - 7 apples = 5 apples"), as is a $ right before one;
    anything else ends the run (other words, ':', ',', '%', '^', a newline, ...). A run that is not a
    well-formed expression ("15 3 + 4", "(3 + 4") is not checked;
  - a run cut by something that may continue the expression in words or notation ("of", "times", "by",
    "%", "^", "!", ...) is not checked either: "10% of 50 + 5 = 10" is not the claim 50 + 5 = 10;
  - only chains with an operator on some side are checked: "2024 = 2024" or "20 = 10" (a date, a list) are
    not, but the "7 = 8" of "3 + 4 = 7 = 8" is;
  - division is exact: 12 / 5 is 12/5 (rational arithmetic), so "12 / 5 = 2" is false; "x / 0" is false;
  - chains: `a = b = c` checks each "=" between neighbouring sides. A link that is false as an equality
    is still accepted when its right side starts with the left side's value and goes on with an operator:
    "3 + 4 = 7 * 2 = 14" reads as 3 + 4 = 7, then 7 * 2 = 14 (a running calculation, a common way of
    writing; "3 + 4 = 8 * 2 = 16" is flagged at 3 + 4 = 8).
What it does not check: that an equation is the one the problem needs (a true but irrelevant equation
passes), word operators ("3 times 4 is 12"), decimals, powers, fractions written in LaTeX.

    ArithProblem, make_problem, rows, task_rows   the problems (seeded, a held-out split)
    solution_steps / sft_example                  worked solutions for the SFT cold start (flaws optional)
    equations(text), check(...)                   the checker
    ArithTask                                     the task as train.py sees it (--data arith)
"""
import functools
import random
import re
from dataclasses import dataclass
from fractions import Fraction

from data import Row, Task, distinct_rows, load_rows

SOURCE = "arith"
TRAIN_PROMPTS, HELD_ROWS = 20000, 1024  # held out: a test and a validation split of this many each
# the problems are a fixed set, like a dataset file: train.py's --seed changes the data order and every sampling
# stream, never which problems are held out (runs of different seeds are scored on the same test problems)
SPLIT_SEED = 0
# difficulty (--arith-level): operations per problem, the largest start, addend and value at any step
LEVELS = {
    "standard": dict(min_ops=2, max_ops=4, max_start=40, max_add=40, max_value=2000),
    # bench/realmodel.py's: SmolLM2-135M after a short cold start is right about a third of the time, and makes
    # its own false equations on the way to some right answers (docs/realmodel.md: how it was chosen)
    "small": dict(min_ops=3, max_ops=3, max_start=20, max_add=20, max_value=100),
}
INSTRUCTION = "One equation per step, then the answer in \\boxed{}."

# ---- the problems ----

PEOPLE = [("Maya", "she"), ("Tom", "he"), ("Lena", "she"), ("Omar", "he"), ("Ines", "she"), ("Ravi", "he"),
          ("Zoe", "she"), ("Ken", "he"), ("Ada", "she"), ("Luis", "he")]
ITEMS = ["marbles", "apples", "stickers", "coins", "books", "pencils", "shells", "cards", "stamps", "cookies"]
OPS = {  # phrasings of each operation; {p} the pronoun, {P} capitalised, {b} the operand, {i} the item
    "+": ["{P} buys {b} more.", "{P} finds {b} more {i}.", "A friend gives {o} {b} more {i}."],
    "-": ["{P} gives away {b} of them.", "{P} loses {b} {i}.", "{P} sells {b} {i}."],
    "*": ["Then the number of {i} {p} has is multiplied by {b}.", "Then {p} ends up with {b} times as many {i}."],
    "/": ["{P} shares the {i} equally among {b} friends and keeps one share.",
          "{P} splits the {i} into {b} equal piles and keeps one pile."],
}
SPECIAL = {("*", 2): "Then the number of {i} {p} has doubles.", ("*", 3): "Then the number of {i} {p} has triples."}
OBJECT = {"he": "him", "she": "her"}


@dataclass(frozen=True)
class ArithProblem:
    text: str
    start: int
    ops: tuple  # ((op, operand), ...), op in "+-*/"
    item: str = "items"

    def running_values(self) -> list[int]:
        vals, v = [], self.start
        for op, b in self.ops:
            v = apply(op, v, b)
            vals.append(v)
        return vals

    @property
    def answer(self) -> int:
        return self.running_values()[-1]


def apply(op, a, b):
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a // b


def make_problem(rng: random.Random, level: str = "standard") -> ArithProblem:
    """A word problem of LEVELS[level]: integer values in 0..max_value at every step (division exact)."""
    lv = LEVELS[level]
    top = lv["max_value"]
    name, p = rng.choice(PEOPLE)
    item = rng.choice(ITEMS)
    v = start = rng.randint(2, lv["max_start"])
    ops, sentences = [], [f"{name} has {start} {item}."]
    for k in range(rng.randint(lv["min_ops"], lv["max_ops"])):
        choices = ["+", "+", "*"] + ["-"] * (v >= 2) + ["/"] * any(v % d == 0 for d in range(2, 10))
        if v * 2 > top:
            choices = [c for c in choices if c != "*"] or ["-"]
        op = rng.choice(choices)
        b = (rng.randint(1, lv["max_add"]) if op == "+" else rng.randint(1, v - 1) if op == "-" else
             rng.randint(2, max(2, min(5, top // max(v, 1)))) if op == "*" else
             rng.choice([d for d in range(2, 10) if v % d == 0]))
        if op == "+" and v + b > top:
            op, b = "-", rng.randint(1, v - 1)
        v = apply(op, v, b)
        ops.append((op, b))
        phrase = SPECIAL.get((op, b)) if rng.random() < 0.5 else None
        phrase = phrase or rng.choice(OPS[op])
        s = phrase.format(p=p, P=p.capitalize(), o=OBJECT[p], b=b, i=item)
        sentences.append(s if k == 0 or s.startswith("Then") else "Then " + s[0].lower() + s[1:])
    sentences.append(f"How many {item} does {name} have now?")
    return ArithProblem(" ".join(sentences), start, tuple(ops), item)


def problem_row(p: ArithProblem) -> Row:
    return Row(prompt=[{"role": "user", "content": f"{p.text}\n\n{INSTRUCTION}"}], ground_truth=str(p.answer),
               extra_info={"question": p.text}, data_source=SOURCE)


def rows(n: int, seed: int, exclude=(), level="standard") -> list[Row]:
    """n distinct problems (seeded) whose text is not in `exclude`."""
    return distinct_rows(n, seed, functools.partial(make_problem, level=level), problem_row, exclude)


@functools.lru_cache(maxsize=4)
def task_rows(seed, n_train=TRAIN_PROMPTS, n_held=HELD_ROWS, level="standard"):
    """(train, validation, test) rows: test drawn with seed + 1, validation (for choosing settings) with seed + 2
    apart from test; neither's problems are in train."""
    test = rows(n_held, seed + 1, level=level)
    val = rows(n_held, seed + 2, {r.extra_info["question"] for r in test}, level)
    held = {r.extra_info["question"] for r in test + val}
    return rows(n_train, seed, held, level), val, test


# ---- worked solutions (the SFT cold start) ----

def solution_steps(p: ArithProblem, slip_step=None, delta=1) -> list[str]:
    """One equation a paragraph ("16 + 4 = 20"), then the boxed answer: short, so that a rollout costs few tokens.
    slip_step: that step writes its result off by delta and the next carries on from the right value (a flawed
    positive: the answer stays right)."""
    steps, prev = [], p.start
    for k, ((op, b), v) in enumerate(zip(p.ops, p.running_values())):
        steps.append(f"{prev} {op} {b} = {v + delta if k == slip_step else v}")
        prev = v
    steps.append(f"The answer is \\boxed{{{p.answer}}}.")
    return steps


def sft_example(rng: random.Random, flawed_share=0.0, level="standard") -> tuple[list, str]:
    """(prompt, a worked solution); with probability flawed_share one step's result is slipped."""
    p = make_problem(rng, level)
    slip = rng.randrange(len(p.ops)) if rng.random() < flawed_share else None
    delta = rng.choice([-2, -1, 1, 2])
    return problem_row(p).prompt, "\n\n".join(solution_steps(p, slip, delta))


# ---- the checker ----

_MINUS = "\u2212\u2012\u2013\u2014\ufe63\uff0d"   # − ‒ – — ﹣ －
_TIMES = "\u00d7\u2715\u2716\u22c5\u00b7\u2217"   # × ✕ ✖ ⋅ · ∗
_DIV = "\u00f7\u2215"                              # ÷ ∕
_NORMALISE = str.maketrans({**{c: "-" for c in _MINUS}, **{c: "*" for c in _TIMES}, **{c: "/" for c in _DIV}})
MAX_DIGITS, MAX_TOKENS = 60, 256  # per number, per side: bounded cost
CONTINUES = {"of", "times", "plus", "minus", "by", "over", "per", "x", "into", "divided", "multiplied", "squared",
             "cubed", "power", "mod", "modulo"}  # words that may carry the expression on in words
_TOKEN = re.compile(r"""
    (?P<num>\d{1,3}(?:,\d{3})+(?![\d,]\d)|\d+)(?P<dec>\.\d+)?   # 1,234 or 1234 (then a decimal part?)
  | (?P<cmp>[<>!=]=+|=>|=<)                                       # <= >= != == : not an equation
  | (?P<eq>=)
  | (?P<op>[-+*/])
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<latex>\\(?:times|cdot|div)(?![A-Za-z]))
  | (?P<word>[A-Za-z]+)
  | (?P<ws>[ \t]+)
  | (?P<other>.|\n)
""", re.X)
_GLUED = set("%^!'") | {"."}  # notation that changes a number it touches


def _tokens(text):
    """(kind, value) tokens of a step: num, bad (a number we cannot read: decimal, too long), op, lp, rp, eq,
    unit (skipped), cut (ends a run; value True when it may continue the expression)."""
    out = []
    for m in _TOKEN.finditer(text.translate(_NORMALISE)):
        kind = m.lastgroup if m.lastgroup != "dec" else "num"
        s = m.group()
        if kind == "num":
            digits = m.group("num").replace(",", "")
            out.append(("bad", s) if m.group("dec") or len(digits) > MAX_DIGITS else ("num", int(digits)))
        elif kind == "latex":
            out.append(("op", "/" if s == "\\div" else "*"))
        elif kind in ("op", "lp", "rp", "eq"):
            out.append((kind, s))
        elif kind == "ws":
            continue
        elif kind == "word":
            if out and out[-1][0] in ("num", "bad") and s.lower() not in CONTINUES:
                out.append(("unit", s))
            else:
                out.append(("cut", s.lower() in CONTINUES))
        elif s == "$" and text[m.end():m.end() + 1].isdigit():
            continue  # a currency sign
        else:  # punctuation, cmp, newline: a sentence's '.' or '!' ends the run, one glued to a number is notation
            glued = s in _GLUED and bool(out) and out[-1][0] in ("num", "bad") and text[m.end():m.end() + 1] not in " \n"
            out.append(("cut", glued or s in "%^"))
    # a unit is skipped only inside an expression (an operator, '=' or ')' follows it); else it ends the run
    keep = []
    for i, t in enumerate(out):
        if t[0] != "unit":
            keep.append(t)
        elif not (i + 1 < len(out) and out[i + 1][0] in ("op", "eq", "rp")):
            keep.append(("cut", False))
    return keep


class _Bad(Exception):
    pass


def _evaluate(side):
    """The value (Fraction) of a side, its tokens' kinds num/op/lp/rp; _Bad if not well formed or too big."""
    if not side or len(side) > MAX_TOKENS or any(k == "bad" for k, _ in side):
        raise _Bad
    pos = 0

    def peek():
        return side[pos] if pos < len(side) else (None, None)

    def atom():
        nonlocal pos
        kind, v = peek()
        if kind == "op" and v in "+-":  # unary sign
            pos += 1
            a = atom()
            return -a if v == "-" else a
        if kind == "num":
            pos += 1
            return Fraction(v)
        if kind == "lp":
            pos += 1
            a = expr()
            if peek()[0] != "rp":
                raise _Bad
            pos += 1
            return a
        raise _Bad

    def term():
        nonlocal pos
        a = atom()
        while peek() in (("op", "*"), ("op", "/")):
            op = peek()[1]
            pos += 1
            b = atom()
            if op == "/" and b == 0:
                return None  # x / 0: no value, and so false
            a = a * b if op == "*" else a / b
            if a is None or abs(a.numerator) > 10 ** 400 or a.denominator > 10 ** 400:
                raise _Bad
        return a

    def expr():
        nonlocal pos
        a = term()
        while a is not None and peek()[0] == "op" and peek()[1] in "+-":
            op = peek()[1]
            pos += 1
            b = term()
            if b is None:
                return None
            a = a + b if op == "+" else a - b
        return a

    value = expr()
    if value is not None and pos != len(side):
        raise _Bad
    return value


def _operates(side):
    """A binary operator in the side (after a number or a closing parenthesis)."""
    return any(k == "op" and side[i - 1][0] in ("num", "rp") for i, (k, _) in enumerate(side) if i)


def _show(side):
    return " ".join(str(v) for _, v in side)


def _value_text(v):
    if v is None:
        return "undefined (division by zero)"
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def equations(text: str) -> list[tuple[str, bool, str]]:
    """Every checked link of a step: (the link as read, true?, its left side's value)."""
    found, chain, side, cut_left = [], [], [], False

    def close(cut_right):
        nonlocal chain, side
        sides = chain + [side]
        if len(sides) >= 2 and any(_operates(x) for x in sides):  # "20 = 10" alone: a date, a list, an index
            for k in range(len(sides) - 1):
                left, right = sides[k], sides[k + 1]
                if (k == 0 and cut_left) or (k + 1 == len(sides) - 1 and cut_right):
                    continue  # the expression may go on past the run: not a claim we can read
                try:
                    a, b = _evaluate(left), _evaluate(right)
                except _Bad:
                    continue
                ok = a is not None and b is not None and a == b
                if not ok and a is not None and len(right) >= 2 and right[0][0] == "num" and right[1][0] == "op":
                    ok = Fraction(right[0][1]) == a  # a running calculation: "3 + 4 = 7 * 2 = 14"
                found.append((f"{_show(left)} = {_show(right)}", ok, _value_text(a)))
        chain, side = [], []

    for kind, v in _tokens(text):
        if kind == "cut":
            close(v)
            cut_left = v
        elif kind == "eq":
            chain.append(side)
            side = []
        else:
            side.append((kind, v))
    close(False)
    return found


def check(problem: str, ground_truth, steps: list[str]) -> tuple[int, str]:
    """(first step with a false equation or -1, a short critique ending in \\boxed{index}). Never raises on
    text; problem and ground truth are not read (see the module's docstring)."""
    n = 0
    for k, step in enumerate(steps):
        for link, ok, value in equations(step):
            n += 1
            if not ok:
                return k, f"Paragraph {k}: {link} is false (the left side is {value}).\n\n\\boxed{{{k}}}"
    return -1, f"{n} equation{'s' * (n != 1)} checked in {len(steps)} paragraphs, all true.\n\n\\boxed{{-1}}"


# ---- the task as the trainer sees it ----


class ArithTask(Task):
    """--data arith: word problems (kind "policy"), SFT targets made on the fly from worked solutions, the
    exact equation checker as the oracle GenRM. test: "arith" (the held-out test split), "arith-val" (the
    validation split, for choosing settings), "none", or rows from a file; eval_prompts: the first that many."""
    checker = staticmethod(check)
    SPLITS = {"arith": 2, "arith-val": 1}  # --test-data -> index in task_rows' (train, val, test)

    def __init__(self, kind: str, split_seed: int = SPLIT_SEED, eval_prompts: int = 0, test="arith", flawed_share=0.0,
                 level="standard"):
        if kind != "policy":
            raise ValueError("--data arith has problems only (no critique rows): --task rl or sft")
        self.split_seed, self.n_test, self.test = split_seed, eval_prompts or 256, test
        self.flawed_share, self.level = flawed_share, level

    def rows(self):
        splits = task_rows(self.split_seed, TRAIN_PROMPTS, HELD_ROWS, self.level)
        if self.test == "none":
            return splits[0], []
        test = splits[self.SPLITS[self.test]] if self.test in self.SPLITS else load_rows(self.test)
        return splits[0], test[: self.n_test]

    def sft_example(self, rng):
        return sft_example(rng, self.flawed_share, self.level)


def add_flags(ap):
    """The arith task's own flag, in a group of its own."""
    g = ap.add_argument_group("arith task (--data arith)")
    g.add_argument("--arith-level", default="standard", choices=list(LEVELS), help="difficulty: arith.LEVELS")
    return g
