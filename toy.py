"""toy.py -- the built-in task: multi-step arithmetic with an exact step checker, plugged into the trainer.

Everything toy-specific lives here, so data.py, fapo.py and genrm.py hold only what real data needs. A new
task of your own is a module like this one: a data.Task subclass (rows, an SFT source, optionally an exact
checker, which genrm.CheckerJudge turns into a judge). It imports only data.py.

Problem "8+6-4+9" (single digits, 2-3 operations, running value >= 0). A clean solution has one
paragraph per operation, then the answer:  8+6=14 / 14-4=10 / 10+9=19 / \\boxed{19}.
Flaws keep the final answer right -- they are the *flawed positives* FAPO is about:
    "slip":    one step writes its result off by 1 or 2; the next step carries on from the right value
    "miscopy": one step copies a wrong operand but writes the right result ("8+7=14" for 8+6)
A flaw that carries a wrong value forward would change the answer; a tiny model cannot produce it with a
right answer, so it is not used (the toy's notes, TOY-NOTES.md in the workplace's shared folder).

Two regimes of SFT traces (`regime=`; the trainer's --toy-regime):
    "coupled"   (default) 30% flawed traces, nothing else: the model's own errors are its only wrong answers,
                and they come mostly with its slips, so outcome reward alone also prunes slips.
    "decoupled" wrong answers get a source of their own, so that outcome reward cannot tell a flawed
                positive from a clean one: the flaw is a miscopied operand in the *last* step (its result
                right), and, drawn independently with its own probability, a *final slip*: the box holds
                the value before the last operation (an early answer). Why these two (docs/results.md, measured):
                - the model carries a slip on (a slipped trace ends right 26-49% of the time after 800 SFT
                  steps, a clean one 78%), and a miscopy earlier in the trace makes it lose its place, so
                  both would tie flaws to wrong answers again; a last-step miscopy feeds only its own result;
                - a final answer off by 1-2 shares the model's "number off by a little" with the miscopy:
                  RL that removes the one removes the other; a box copied from the wrong place does not.
                It wants a longer cold start (3000 steps): after 800 the model still miscomputes the result
                more often after a miscopied operand (6.6% vs 4.1%), after 3000 hardly (3.2% vs 2.5%).

    ToyProblem, make_problem, parse_problem   the task
    solution_steps, solution, first_error     solutions (clean or flawed) and the exact checker
    rows(...), task_rows(task, seed, n_test)  verl-style rows: policy prompts, or GenRM critique rows
    sft_example / critic_sft_example          cold-start targets: toy traces, checker-written critiques
    tokenizer(), build_model(tok, seed)       a word-level tokenizer with a chat template; a 2-layer Qwen3
    check(problem, ground_truth, steps)       the exact checker in the judge's terms (genrm.CheckerJudge(check))
    ToyTask, add_flags                        the task as train.py sees it; its own flags (--toy-regime, ...)

The toy uses the real formats end to end (chat template, blank-line steps, \\boxed{} answers, the
FAPO-Critic prompt), so the demo runs the same code as a real run; only the oracle is toy-specific.
"""
import functools
import math
import random
import re
from dataclasses import dataclass

import torch

from data import PROMPT_PHRASES, Row, Task, critic_prompt, distinct_rows, encode_rows, load_critic_rows, load_rows

SOURCE, CRITIC_SOURCE = "toy_arith", "toy_critic"
TRAIN_PROMPTS, TRAIN_CRITIC_ROWS, TEST_ROWS = 20000, 4000, 256  # pool sizes of the demo

# ---- the task ----


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


def make_problem(rng: random.Random, min_ops=2, max_ops=3) -> ToyProblem:
    """Single digits 1-9 joined by +/-; subtraction only where the running value stays >= 0."""
    first = rng.randint(1, 9)
    v, ops = first, []
    for _ in range(rng.randint(min_ops, max_ops)):
        b = rng.randint(1, 9)
        op = rng.choice("+-") if v >= b else "+"
        v = v + b if op == "+" else v - b
        ops.append((op, b))
    return ToyProblem(first, tuple(ops))


def parse_problem(text: str) -> ToyProblem:
    """Inverse of ToyProblem.text; ValueError on anything else (model output is untrusted)."""
    m = re.fullmatch(r"([1-9])((?:[+-][1-9])+)", text.strip())
    if not m:
        raise ValueError(f"not a toy problem: {text!r}")
    return ToyProblem(int(m.group(1)), tuple((t[0], int(t[1])) for t in re.findall(r"[+-][1-9]", m.group(2))))


def solution_steps(p: ToyProblem, flaw=None, flaw_step=0, delta=1, final_delta=0) -> list[str]:
    """Steps of a solution; flaw in (None, "slip", "miscopy") applied at operation `flaw_step`;
    final_delta != 0 writes the boxed answer off by that much (a wrong answer)."""
    steps, prev = [], p.first
    for k, ((op, b), v) in enumerate(zip(p.ops, p.running_values())):
        shown_b, shown_v = b, v
        if k == flaw_step and flaw == "slip":
            shown_v = v + delta
        elif k == flaw_step and flaw == "miscopy":
            shown_b = b + delta
        steps.append(f"{prev}{op}{shown_b}={shown_v}")
        prev = v  # carry on from the right value: the final answer stays right
    steps.append(f"\\boxed{{{p.answer + final_delta}}}")
    return steps


def random_flaw(p: ToyProblem, rng: random.Random):
    """(flaw, step, delta) for a flaw that stays well-formed: values >= 0, operands in 1..9."""
    while True:
        flaw = rng.choice(["slip", "miscopy"])
        k = rng.randrange(len(p.ops))
        delta = rng.choice([-2, -1, 1, 2])
        if flaw == "slip" and p.running_values()[k] + delta >= 0:
            return flaw, k, delta
        if flaw == "miscopy" and 1 <= p.ops[k][1] + delta <= 9:
            return flaw, k, delta


def solution(p: ToyProblem, rng: random.Random | None = None, flawed=False) -> str:
    """A solution text (steps joined by blank lines); flawed=True injects one random flaw."""
    flaw, k, delta = random_flaw(p, rng) if flawed else (None, 0, 0)
    return "\n\n".join(solution_steps(p, flaw, k, delta))


STEP = re.compile(r"([0-9]+)([+-])([0-9]+)=([0-9]+)")  # "a op b = v", one paragraph


def first_error(p: ToyProblem, steps: list[str]) -> int:
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
        m = STEP.fullmatch(steps[k].strip())
        if not m or (int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))) != (prev, op, b, v):
            return k
        prev = v
    if len(steps) <= n:
        return max(len(steps) - 1, 0)
    if steps[n].strip() != f"\\boxed{{{p.answer}}}":
        return n
    return n + 1 if len(steps) > n + 1 else -1



# ---- rows: policy prompts and GenRM critique rows ----

REGIMES = ("coupled", "decoupled")


def sft_example(rng: random.Random, flawed_share: float, regime="coupled", slip_share=0.2) -> tuple[list, str]:
    """(prompt, solution) for the SFT cold start; the solution is flawed with probability flawed_share.

    regime "decoupled": the flaw is a miscopied operand in the last step (the result, and so the answer,
    stays right), and with probability slip_share, drawn independently of the flaw, the answer is an early
    one (the value before the last operation: a wrong answer that no flaw predicts). "coupled" (the
    default) ignores slip_share and draws exactly what it always has.
    """
    if regime not in REGIMES:
        raise ValueError(f"toy regime must be one of {REGIMES}, got {regime!r}")
    p = make_problem(rng)
    if regime == "coupled":
        return problem_row(p).prompt, solution(p, rng, flawed=rng.random() < flawed_share)
    flaw, k, delta = last_step_miscopy(p, rng) if rng.random() < flawed_share else (None, 0, 0)
    early = p.running_values()[-2] - p.answer if rng.random() < slip_share else 0
    return problem_row(p).prompt, "\n\n".join(solution_steps(p, flaw, k, delta, final_delta=early))


def last_step_miscopy(p: ToyProblem, rng: random.Random):
    """(flaw, step, delta): the last step's operand written off by 1 or 2 (staying in 1..9)."""
    k = len(p.ops) - 1
    return "miscopy", k, rng.choice([d for d in (-2, -1, 1, 2) if 1 <= p.ops[k][1] + d <= 9])


def problem_row(p: ToyProblem) -> Row:
    """A verl-style row for the toy task: the problem is the whole user message."""
    return Row(prompt=[{"role": "user", "content": p.text}], ground_truth=str(p.answer),
               extra_info={"question": p.text}, data_source=SOURCE)


def rows(n: int, seed: int, exclude=()) -> list[Row]:
    """n distinct toy problems as rows, none of whose text is in `exclude` (keeps test out of train)."""
    return distinct_rows(n, seed, make_problem, problem_row, exclude)


def critique(p: ToyProblem, steps: list[str]) -> str:
    """A checker-written critique: every number of a paragraph set against the true one, then a verdict.

    One line per checked paragraph, stopping at the first wrong one: `1: 14 14 = 4 4 = 11 10 ! wrong`
    reads "first operand written 14, true 14, same; operand 4 vs 4, same; result 11 vs 10, differs".
    Each comparison is of two adjacent numbers, which a small model learns quickly; spotting a mismatch
    between a whole paragraph and a whole recomputed line it does not.
    """
    first = first_error(p, steps)
    lines, prev = [], p.first
    for k, ((op, b), v) in enumerate(zip(p.ops, p.running_values())):
        m = STEP.fullmatch(steps[k].strip()) if k < len(steps) else None
        if m is None or m.group(2) != op:
            fields = "?"
        else:
            pairs = zip((int(m.group(1)), int(m.group(3)), int(m.group(4))), (prev, b, v))
            fields = " ".join(f"{w} {t} {'=' if w == t else '!'}" for w, t in pairs)
        lines.append(f"{k}: {fields} {'wrong' if k == first else 'ok'}")
        prev = v
        if k == first:
            break
    return "\n".join(lines) + f"\n\n\\boxed{{{first}}}"


def critic_sft_example(rng: random.Random) -> tuple[list, str]:
    """(prompt, checker-written critique) for the toy GenRM's SFT cold start."""
    (row, p, steps), = critic_rows(1, seed=rng.randrange(2**62))
    return row.prompt, critique(p, steps)


def critic_rows(n: int, seed: int, flawed_share=0.5) -> list[tuple[Row, ToyProblem, list[str]]]:
    """(row, problem, steps): rows as FAPO-Critic rows (prompt, ground_truth = first wrong step,
    extra_info.total_steps). The solutions are toy solutions, flawed with probability flawed_share."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = make_problem(rng)
        flaw, k, delta = random_flaw(p, rng) if rng.random() < flawed_share else (None, 0, 0)
        steps = solution_steps(p, flaw, k, delta)
        label = first_error(p, steps)
        row = Row(prompt=[{"role": "user", "content": critic_prompt(p.text, p.answer, steps)}],
                  ground_truth=label, extra_info={"total_steps": len(steps), "question": p.text},
                  data_source=CRITIC_SOURCE)
        out.append((row, p, steps))
    return out


# ---- tokenizer and model: built locally, nothing downloaded ----

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
# every word of the GenRM prompt (read off data.py's own sentences) and of the chat roles and critiques,
# so the toy GenRM reads real prompts word by word
_WORDS = list(dict.fromkeys(re.findall(r"[A-Za-z]+", " ".join(PROMPT_PHRASES[:1] + PROMPT_PHRASES[2:] + PROMPT_PHRASES[1:2])
                                       + " user assistant system ok wrong")))
_PATTERN = r"\\boxed\{|</?paragraph_\d+>|<\|[a-z_]+\|>| ?[A-Za-z]+|\n\n|."


@functools.lru_cache(maxsize=2)  # one object per setting: never modified after it is built
def tokenizer(phrases=PROMPT_PHRASES, max_paragraphs=16):
    """A word-level tokenizer: digits and symbols one token each, English words whole (with their
    leading space), and each of `phrases` (the GenRM prompt's fixed sentences) a single token, so the
    toy GenRM reads the real prompt text in ~80 tokens instead of ~190."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n", "\n\n", "\\boxed{"]
    tags = [f"<paragraph_{i}>" for i in range(max_paragraphs)] + [f"</paragraph_{i}>" for i in range(max_paragraphs)]
    words = _WORDS + [" " + w for w in _WORDS]  # a word with its leading space is one token
    vocab = {}
    for t in _SPECIALS + chars + tags + words + list(phrases):
        vocab.setdefault(t, len(vocab))
    pattern = "".join(re.escape(ph) + "|" for ph in sorted(phrases, key=len, reverse=True)) + _PATTERN
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(_SPECIALS)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 unk_token="<unk>")
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_model(tok, seed):
    """The toy policy/GenRM: a 2-layer Qwen3 (~0.5M parameters) over the toy tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=64 * math.ceil(len(tok) / 64), hidden_size=128, intermediate_size=512,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      max_position_embeddings=512, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)  # explicit: the same seed builds the same model
    return Qwen3ForCausalLM(cfg)


# ---- the exact checker, in the judge's terms ----


def check(problem: str, ground_truth, steps: list[str]) -> tuple[int, str]:
    """(first wrong step or -1, the checker-written critique) of a solution to a toy problem; ValueError for
    anything that is not one (genrm.CheckerJudge then gives no verdict, never a flag)."""
    p = parse_problem(problem)
    return first_error(p, steps), critique(p, steps)


# ---- the task as the trainer sees it ----


@functools.lru_cache(maxsize=4)  # a pure function of its arguments; rows are never modified (tests run many demos)
def task_rows(task, seed, n_test=TEST_ROWS):
    """(train rows, test rows) of the demo: policy prompts for rl/sft, critique rows for genrm. The test
    problems are drawn with seed + 1 and kept out of the training pool."""
    if task == "genrm":
        return critic_eval_rows(TRAIN_CRITIC_ROWS, seed), critic_eval_rows(n_test, seed + 1)
    test = rows(n_test, seed + 1)
    return rows(TRAIN_PROMPTS, seed, {r.prompt[0]["content"] for r in test}), test


def critic_eval_rows(n: int, seed: int) -> list[Row]:
    """n toy critique rows (the rows of critic_rows, without their problems and steps)."""
    return [r for r, _, _ in critic_rows(n, seed)]


class ToyTask(Task):
    """The built-in demo: toy problems (kind "policy") or toy critique rows (kind "critic"), SFT targets made
    on the fly (toy traces, or checker-written critiques), and the exact checker."""
    checker = staticmethod(check)

    def __init__(self, kind: str, seed: int, eval_prompts: int = 0, flawed_share=0.3, regime="coupled",
                 slip_share=0.2, test="toy"):
        self.kind, self.seed, self.n_test, self.test = kind, seed, eval_prompts or TEST_ROWS, test
        self.flawed_share, self.regime, self.slip_share = flawed_share, regime, slip_share

    def rows(self):
        """The toy's train split, and its test split (test="toy"), none ("none"), or rows from a file."""
        train, test = task_rows("genrm" if self.kind == "critic" else "rl", self.seed, self.n_test)
        if self.test == "none":
            return train, []
        if self.test != "toy":
            test = (load_critic_rows if self.kind == "critic" else load_rows)(self.test)[: self.n_test]
        return train, test

    def encode(self, tok, rows, max_len, system="keep"):
        """data.encode_rows, remembered for the toy tokenizer: the 20,000-prompt pool costs 0.75 s to encode,
        and tests (and notebooks) build many toy runs in one process."""
        if tok is tokenizer() and system == "keep":
            return _encoded(rows, max_len)
        return super().encode(tok, rows, max_len, system)

    def sft_example(self, rng):
        if self.kind == "critic":  # the toy GenRM's cold start: checker-written critiques
            return critic_sft_example(rng)
        return sft_example(rng, self.flawed_share, self.regime, self.slip_share)


_ENCODED = {}  # (id of a task_rows list, max_len) -> (the list, encode_rows of it): task_rows' lists live on


def _encoded(rows, max_len):
    key = (id(rows), max_len)
    if key not in _ENCODED or _ENCODED[key][0] is not rows:
        while len(_ENCODED) >= 8:  # bounded: task_rows keeps 4 lists
            _ENCODED.pop(next(iter(_ENCODED)))
        _ENCODED[key] = rows, encode_rows(tokenizer(), rows, max_len)
    return _ENCODED[key][1]


def add_flags(ap):
    """The toy task's own flags, in a group of their own (train.py --help shows them apart)."""
    g = ap.add_argument_group("toy task (--data toy)")
    g.add_argument("--sft-flawed-share", type=float, default=0.3, help="share of SFT traces with a flawed step")
    g.add_argument("--toy-regime", default="coupled", choices=list(REGIMES), help="SFT traces: coupled (the demo) or "
                   "decoupled, whose wrong answers come from final slips independent of the flaws (wants --sft-steps 3000)")
    g.add_argument("--sft-slip-share", type=float, default=0.2, help="decoupled: share of SFT traces with a final slip")
    return g
