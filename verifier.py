"""verifier.py -- the paper's rule reward R_rule: DAPO's math verifier, as FAPO trained with it.

    last_boxed(text)                content of the last \\boxed{...}
    normalize_answer(s)             DAPO's normalize_final_answer, verbatim semantics
    verify(response, ground_truth)  +1 iff the normalised answers match (R_rule in {+1, -1}), on the last 300 chars
    answer_issues(ground_truth)     why verify can never match it (27.0, 025, ...); data.load_rows warns on these
    canonical_answer(answer)        a ground truth written the way verify matches it (27.0 -> 27)

A room of its own: it is text in, a verdict out, with bounded cost on untrusted text (no quadratic regex),
and data.py (rows), fapo.py (the reward) and genrm.py (the box of a critique) all read it. Imports nothing of ours.
"""
import re

def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{` in text, read to its balanced closing brace.

    Quirk kept for parity with DAPO's `last_boxed_only_string`: only the *last* `\\boxed{` is looked
    at, so an unclosed last box (a truncated response) yields None even if an earlier box is complete.
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for m in re.finditer(r"[{}]", text[start + len("\\boxed"):]):  # one pass over the braces: linear
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[start + len("\\boxed{"):start + len("\\boxed") + m.start()]
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


# A line with two '$' or more becomes '$' + what lies between its first two '$' + '$' (DAPO's regex can only
# match from a line's start, its greedy tail eats the line); anchored at line starts, each line is read once.
_DOLLAR_PAIR = re.compile(r"^[^\n$]*\$([^\n$]*)\$[^\n]*", re.M)


def _unwrap_lazy(s: str, head: str) -> str:
    """Each `head` (say '\\text{') with a '}' later on its line is replaced, up to the first such '}', by
    what lies between; scanning resumes after that '}', as re.sub does (no rescan of the output)."""
    out, pos, k = [], 0, len(head)
    close = eol = -1  # next '}' and next '\n' at or after the current content start, reused while ahead
    p = s.find(head)
    while p >= 0:
        start = p + k
        if close < start:
            close = s.find("}", start)
            if close < 0:
                break  # no '}' left anywhere: no more matches
        if eol < start:
            eol = s.find("\n", start)
            eol = len(s) if eol < 0 else eol
        if close < eol:
            out += [s[pos:p], s[start:close]]
            pos = close + 1
            p = s.find(head, pos)
        else:
            p = s.find(head, p + 1)
    out.append(s[pos:])
    return "".join(out)


def _unwrap_greedy(s: str, head: str) -> str:
    """Per line: the first `head` with a '}' after it on the line is replaced, up to the line's last '}',
    by what lies between (a greedy (.*) then backs off to the last '}'); the rest of that line has no '}'."""
    out, pos, k = [], 0, len(head)
    p = s.find(head)
    while p >= 0:
        eol = s.find("\n", p + k)
        eol = len(s) if eol < 0 else eol
        close = s.rfind("}", p + k, eol)
        if close >= 0:
            out += [s[pos:p], s[p + k:close]]
            pos = close + 1
        p = s.find(head, eol)
    out.append(s[pos:])
    return "".join(out)


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
    # DAPO's next five steps are re.subs whose (.*?) / (.*) make them quadratic in the length (a 100k-char
    # ground truth took minutes); these give the same output in linear time (tests check parity with the
    # regexes on random strings). Without re.DOTALL '.' stops at '\n', so each works within lines.
    s = _DOLLAR_PAIR.sub(r"$\1$", s)          # re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s)
    s = _unwrap_lazy(s, "\\text{")            # re.sub(r"(\\text\{)(.*?)(\})", "\\2", s)
    s = _unwrap_lazy(s, "\\textbf{")          # re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", s)
    s = _unwrap_lazy(s, "\\overline{")        # re.sub(r"(\\overline\{)(.*?)(\})", "\\2", s)
    s = _unwrap_greedy(s, "\\boxed{")         # re.sub(r"(\\boxed\{)(.*)(\})", "\\2", s)
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


_INT_FLOAT = re.compile(r"[+-]?[0-9]+\.0+")  # 27.0, 27.00
_LEADING_ZERO = re.compile(r"[+-]?0[0-9]+")  # 025


def answer_issues(ground_truth) -> str | None:
    """Why verify can never (or will probably never) score this ground truth +1; None if it looks fine.
    A match is string equality after normalize_answer: "27.0" never equals a model's \\boxed{27}, "025"
    not \\boxed{25} (`python data.py prepare` canonicalises both)."""
    gt = normalize_answer(str(ground_truth))
    if not gt:
        return "normalises to an empty string"
    if _INT_FLOAT.fullmatch(gt):
        return f"integer written as a float: {gt[:20]} is not matched by \\boxed{{{canonical_answer(gt)[:20]}}}"
    if _LEADING_ZERO.fullmatch(gt):
        return f"leading zero: {gt[:20]} is not matched by \\boxed{{{canonical_answer(gt)[:20]}}}"
    if len(gt) > VERIFY_WINDOW - len("\\boxed{}"):
        return f"{len(gt)} characters normalised: longer than verify's {VERIFY_WINDOW}-character window"
    return None


def canonical_answer(answer) -> str:
    """An answer as a ground-truth string: integer-valued floats as integers (27.0 / "27.0" -> "27"),
    integers without leading zeros ("025" -> "25"); anything else as written (str() for other numbers)."""
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    s = str(answer).strip()
    if _INT_FLOAT.fullmatch(s) or _LEADING_ZERO.fullmatch(s):
        digits = s.lstrip("+-").split(".")[0].lstrip("0") or "0"
        return "-" + digits if s[0] == "-" and digits != "0" else digits
    return str(answer)
