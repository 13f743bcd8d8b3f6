"""genrm.py -- the generative reward model (GenRM): its prompt, its verdict, its reward, its metrics.

The GenRM reads a problem, the ground-truth answer and a solution split into tagged paragraphs, reasons,
and puts the index of the first wrong paragraph (or -1 for "no error") in \\boxed{}. FAPO uses it to
flag flawed positives; it is itself trained with GRPO on the stepwise reward (paper, FAPO-Critic):

    R(t, t*) = -1                      if t is unparseable, or the flawed/clean verdict is wrong
             = +1                      if t = t* = -1                        (clean, said clean)
             = 1 - |t - t*| / n        if t, t* >= 0                         (flawed, located)

i.e. outcome +1/-1 plus process -|t - t*|/n when both say flawed.

    genrm_prompt(problem, ground_truth, steps)  the paper's user message, byte for byte
    parse_index(text, n_steps)                  strict: -1 or 0..n-1 from the last \\boxed{}, else None
    genrm_reward(pred, target, n_steps)         the reward above
    critic_metrics(preds, labels, ...)          ProcessBench and FlawedPositiveBench numbers
    critic_rewards                              a batch of GenRM rollouts scored
    check_critic_rows / load_critic_rows        critic rows (ours or the official eval format) normalised, checked
    pb_subset, report                           ProcessBench subset of a data_source; metrics labelled officially
    Verdict, ModelJudge                         a judge's answer; a transformers GenRM as FAPO's judge
    (genrm_http.HTTPJudge                       a GenRM served by vLLM / SGLang: the client lives in genrm_http.py)

Evaluate a GenRM on critique rows (FAPO-Critic / ProcessBench rows, ours or the official eval format with
extra_info.raw_info.{label, final_answer_correct}; or 512 toy rows). It prints the pooled "F1 (PB)", each
subset's f1 (data_source suffix gsm8k / math / olympiadbench / omnimath) and their "avg f1":

    python genrm.py --model DIR --data rows.jsonl [--votes 4 --temperature 0.6 --top-p 0.95]
    python genrm.py --model oracle --data toy      # the toy checker (toy.py): every metric 1.0
    python genrm.py --model http://127.0.0.1:8000/v1 --genrm-model NAME --data rows.jsonl   # a served GenRM
"""
import json
import re
from dataclasses import dataclass

import torch

from data import Row, as_messages, encode_prompt, last_boxed, load_rows
from sampler import generate

# ---- prompt ----

_HEAD = ("The following is a math problem with its ground truth answer, along with an AI solution "
         "(split into paragraphs, enclosed with tags and indexed from 0):")
_TASK = ("Your task is to review and critique the solution paragraph by paragraph. Once you identify an "
         "error in a paragraph, return the index of the paragraph where the earliest error occurs. "
         "Otherwise, return the index of -1 (which typically denotes 'not found').\n\n"
         "Please reason step by step, put your final answer (i.e., the index) in \\boxed{}.")


# the prompt's fixed sentences (the toy tokenizer makes each one token)
PROMPT_PHRASES = (_HEAD, _TASK, "[Math Problem]", "[Ground Truth]", "[AI Solution]")


def genrm_prompt(problem: str, ground_truth, steps: list[str]) -> str:
    """The user message of FAPO-Critic (identical to the 100 shared training rows).

    The official code sends policy rollouts to its GenRM untagged; we tag them the same way as the
    training data so the GenRM is asked in the format it was trained on.
    """
    paragraphs = "\n\n".join(f"<paragraph_{i}>\n{s}\n</paragraph_{i}>" for i, s in enumerate(steps))
    return (f"{_HEAD}\n\n[Math Problem]\n\n{problem}\n\n[Ground Truth]\n\n{ground_truth}\n\n"
            f"[AI Solution]\n\n{paragraphs}\n\n{_TASK}")


def parse_genrm_prompt(text: str) -> tuple[str, str, list[str]]:
    """Inverse of genrm_prompt: (problem, ground_truth, steps); ValueError if it is not one."""
    m = re.fullmatch(re.escape(_HEAD) + r"\n\n\[Math Problem\]\n\n(.*?)\n\n\[Ground Truth\]\n\n(.*?)"
                     r"\n\n\[AI Solution\]\n\n(.*)\n\n" + re.escape(_TASK), text, re.S)
    if not m:
        raise ValueError("not a GenRM prompt")
    steps = re.findall(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", m.group(3), re.S)
    return m.group(1), m.group(2), [s for _, s in steps]


# ---- verdict ----

_INT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take "٣"


def parse_index(text: str, n_steps: int) -> int | None:
    """The last \\boxed{} as a strict integer: -1 or 0..n_steps-1; anything else is None.

    Never eval: the official code evals the box content, but model output is untrusted text. Spaces
    around the number are allowed ("\\boxed{ 3 }"); "3.0", "1+2", "paragraph 3", "" are not.
    """
    content = last_boxed(text)
    if content is None or not _INT.fullmatch(content := content.strip()):
        return None
    # more digits than n_steps has is out of range: never hand int() a huge digit string (it raises
    # past 4300 digits, leading zeros included)
    digits = content.lstrip("+-").lstrip("0") or "0"
    if len(digits) > len(str(max(n_steps, 1))):
        return None
    k = -int(digits) if content[0] == "-" else int(digits)
    return k if k == -1 or 0 <= k < n_steps else None


# ---- reward ----


def genrm_reward_parts(pred: int | None, target: int, n_steps: int) -> tuple[float, float]:
    """(outcome, process) with outcome + process = genrm_reward. Process is 0 unless both say flawed."""
    if pred is None:
        return -1.0, 0.0
    if (pred == -1) != (target == -1):
        return -1.0, 0.0
    if target == -1:
        return 1.0, 0.0
    return 1.0, -abs(pred - target) / n_steps


def genrm_reward(pred: int | None, target: int, n_steps: int) -> float:
    """The official GenRM reward: unparseable -1; wrong verdict -1; clean-clean +1; else 1 - |t-t*|/n."""
    outcome, process = genrm_reward_parts(pred, target, n_steps)
    return outcome + process


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
                r.extra_info["total_steps"] = len(parse_genrm_prompt(last)[2]) or None
            except ValueError:
                pass
        n = r.extra_info.get("total_steps")
        if not isinstance(n, int):
            raise ValueError(f"{path}: row {i}: field 'extra_info.total_steps': missing (a critic row needs it)")
        if isinstance(r.ground_truth, bool) or not isinstance(r.ground_truth, int) or not -1 <= r.ground_truth < n:
            raise ValueError(f"{path}: row {i}: field 'reward_model.ground_truth': expected the first wrong step "
                             f"in -1..{n - 1}, got {r.ground_truth!r}")
        if not isinstance(r.extra_info.get("final_answer_correct", False), bool):
            raise ValueError(f"{path}: row {i}: field 'extra_info.final_answer_correct': expected a bool, "
                             f"got {r.extra_info['final_answer_correct']!r}")


def load_critic_rows(path) -> list[Row]:
    """Critique rows (ours or the official eval format) loaded and checked as training checks them."""
    rows = load_rows(path)
    check_critic_rows(rows, str(path))
    return rows


def critic_rewards(rows: list[Row], texts: list[str]) -> tuple[list, dict, list]:
    """GenRM rollouts scored against their rows (label = ground_truth, n = extra_info.total_steps):
    the rewards, sums for logging (outcome, process, verdicts right, parse failures, |t - t*|), and
    the parsed verdicts."""
    preds, rewards, sums = [], [], {"n": len(rows), "outcome": 0.0, "process": 0.0, "verdict_right": 0, "parse_fail": 0,
                         "loc_err": 0.0, "both_flawed": 0}
    for r, t in zip(rows, texts):
        n = r.extra_info["total_steps"]
        pred = parse_index(t, n)
        preds.append(pred)
        outcome, process = genrm_reward_parts(pred, r.ground_truth, n)
        rewards.append(outcome + process)
        sums["outcome"] += outcome
        sums["process"] += process
        sums["parse_fail"] += pred is None
        sums["verdict_right"] += outcome > 0
        if pred is not None and pred != -1 and r.ground_truth != -1:
            sums["both_flawed"] += 1
            sums["loc_err"] += abs(pred - r.ground_truth)
    return rewards, sums, preds


def critic_batch_metrics(s: dict) -> dict:
    """Rates from (summed) critic_rewards sums: reward parts, verdict accuracy, parse failures, mean |t - t*|."""
    n = max(s["n"], 1)
    return {"outcome": s["outcome"] / n, "process": s["process"] / n, "verdict_acc": s["verdict_right"] / n,
            "parse_fail": s["parse_fail"] / n, "loc_err": s["loc_err"] / max(s["both_flawed"], 1)}


# ---- metrics (the official evaluation script's definitions) ----


def _safe_div(a, b):
    return a / b if b else 0.0


def _f1(p, r):
    return _safe_div(2 * p * r, p + r)


def _processbench(preds, labels):
    err = [(p, l) for p, l in zip(preds, labels) if l != -1]
    cor = [p for p, l in zip(preds, labels) if l == -1]
    err_acc = _safe_div(sum(p != -1 for p, _ in err), len(err))  # None counts as "not -1"
    err_loc_acc = _safe_div(sum(p == l for p, l in err), len(err))
    corr_acc = _safe_div(sum(p == -1 for p in cor), len(cor))
    return {"err_acc": err_acc, "err_loc_acc": err_loc_acc, "corr_acc": corr_acc,
            "pb_f1": _f1(err_loc_acc, corr_acc), "n_err": len(err), "n_corr": len(cor)}


def critic_metrics(preds, labels, final_correct=None, subsets=None) -> dict:
    """ProcessBench and FlawedPositiveBench metrics for GenRM predictions.

    preds: ints or None (unparseable, counted like any index other than -1, as the official script
    does); labels: ints (-1 = clean); final_correct: bools, whether each solution's final answer is
    right (FlawedPositiveBench uses those rows only; all rows when not given). pb_f1 is the official
    "F1 (PB)": pooled over all rows. subsets: a name per row (pb_subset); each subset's metrics come as
    "{name}/..." and the mean of their F1s as avg_f1 (the official "avg f1"). Empty denominators give 0.0.
    """
    preds, labels = list(preds), list(labels)
    out = _processbench(preds, labels)
    if subsets is not None:
        names = sorted(set(subsets))
        for name in names:
            idx = [i for i, s in enumerate(subsets) if s == name]
            sub = _processbench([preds[i] for i in idx], [labels[i] for i in idx])
            out.update({f"{name}/{k}": v for k, v in sub.items()})
        out["avg_f1"] = _safe_div(sum(out[f"{name}/pb_f1"] for name in names), len(names))
    keep = range(len(preds)) if final_correct is None else [i for i, c in enumerate(final_correct) if c]
    flag = [preds[i] != -1 for i in keep]
    truth = [labels[i] != -1 for i in keep]
    tp = sum(f and t for f, t in zip(flag, truth))
    precision, recall = _safe_div(tp, sum(flag)), _safe_div(tp, sum(truth))
    out.update({"fp_precision": precision, "fp_recall": recall, "fp_f1": _f1(precision, recall),
                "fp_acc": _safe_div(sum(f == t for f, t in zip(flag, truth)), len(flag)), "n_fp": len(flag)})
    return out


PB_SUBSETS = ("olympiadbench", "omnimath", "gsm8k", "math")  # ProcessBench's, longest suffix first


def pb_subset(data_source: str) -> str:
    """The ProcessBench subset of a row: the official script groups by data_source suffix
    (processbench_gsm8k -> gsm8k); other sources are their own subset. Unlike the official
    `endswith("math")`, omnimath rows are not also counted in math: each row is in one subset."""
    return next((s for s in PB_SUBSETS if data_source.endswith(s)), data_source)


def majority_vote(indices: list) -> int | None:
    """Most common verdict among k samples (parseable ones first; ties -> the smallest index)."""
    valid = [i for i in indices if i is not None]
    if not valid:
        return None
    return min(set(valid), key=lambda i: (-valid.count(i), i))


# ---- running a GenRM model (FAPO's judge, and the evaluation command) ----


@dataclass
class Verdict:
    """What a judge says about one solution."""
    index: int | None        # first wrong step, -1 for clean; None: no usable verdict (never a flag)
    text: str = ""           # the critique the GenRM wrote ("" for the exact toy checker)
    error: str | None = None  # why no verdict was obtained at all (prompt too long, service down, ...)


def as_verdict(v) -> Verdict:
    """A judge may answer with bare indices (int | None): a forker's lambda is a judge too."""
    return v if isinstance(v, Verdict) else Verdict(v)


# A judge is any object with
#     judge(problems, ground_truths, step_lists) -> [Verdict]   (FAPO: rollouts, split into steps)
#     judge.judge_prompts(prompts, n_steps) -> [Verdict]        (evaluation: ready-made critique rows)
# ModelJudge below runs a transformers model in-process; toy.OracleJudge is the toy task's exact checker.


class ModelJudge:
    """A transformers GenRM as FAPO's judge.

    Each solution is shown in the training format (genrm_prompt, chat template), decoded with the
    sampler; `votes` > 1 samples k verdicts and takes the majority. A prompt that does not fit the
    model's context gets Verdict(None, error="too long"), counted apart by fapo.score_rollouts.
    """

    def __init__(self, model, tokenizer, max_new_tokens=1024, temperature=0.0, top_p=1.0, votes=1, seed=0,
                 device="cpu", eos_ids=None, context_len=None, max_tokens_in_flight=None):
        self.model, self.tok, self.votes, self.device = model, tokenizer, votes, device
        self.kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       eos_token_id=eos_ids if eos_ids is not None else tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                       max_tokens_in_flight=max_tokens_in_flight)
        self.context = context_len or getattr(model.config, "max_position_embeddings", None) or 10**9
        self.kw["context_len"] = self.context
        self.reseed(seed)
        self.response_tokens = 0  # total decoded, for cost accounting

    def reseed(self, seed):
        """A fresh generator: the trainer reseeds per step, so a resumed run samples the same critiques."""
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    def judge_prompts(self, prompts, n_steps):
        """Verdicts for ready-made prompts (chat messages or strings) with their step counts."""
        ids = [encode_prompt(self.tok, p) for p in prompts]
        ok = [i for i, x in enumerate(ids) if len(x) + self.kw["max_new_tokens"] <= self.context]
        comps = generate(self.model, [ids[i] for i in ok], n=self.votes, generator=self.gen, **self.kw) if ok else []
        self.response_tokens += sum(len(c.tokens) for c in comps)
        out = [Verdict(None, error=f"prompt + max new tokens > context {self.context}") for _ in prompts]
        for j, i in enumerate(ok):
            texts = [self.tok.decode(c.tokens, skip_special_tokens=True) for c in comps[j * self.votes:(j + 1) * self.votes]]
            votes = [parse_index(t, n_steps[i]) for t in texts]
            index = majority_vote(votes)
            out[i] = Verdict(index, texts[votes.index(index)] if index in votes else texts[0])
        return out

    def __call__(self, problems, ground_truths, step_lists):
        prompts = [genrm_prompt(p, g, s) for p, g, s in zip(problems, ground_truths, step_lists)]
        return self.judge_prompts(prompts, [len(s) for s in step_lists])


def evaluate_rows(judge, rows: list[Row]) -> dict:
    """critic_metrics of a judge over critique rows (FAPO-Critic / ProcessBench rows, ours or the official
    eval format), after check_critic_rows: label, n = extra_info.total_steps, subset = pb_subset(data_source),
    FlawedPositiveBench restricted to rows with final_answer_correct when that field is present."""
    check_critic_rows(rows, "<rows>")
    verdicts = [as_verdict(v) for v in judge.judge_prompts([r.prompt for r in rows],
                                                            [r.extra_info["total_steps"] for r in rows])]
    preds = [v.index for v in verdicts]
    fc = [r.extra_info.get("final_answer_correct", True) for r in rows]
    m = critic_metrics(preds, [r.ground_truth for r in rows], final_correct=fc,
                       subsets=[pb_subset(r.data_source) for r in rows])
    m["avg_response_tokens"] = judge.response_tokens / max(len(rows) * judge.votes, 1)
    # a verdict missing because the judge got no answer (service down, prompt too long) is not the
    # GenRM's fault: counted apart from an answer without a usable \boxed{}
    m["unparseable"] = sum(v.index is None and not v.error for v in verdicts) / max(len(rows), 1)
    m["judge_failed"] = sum(bool(v.error) for v in verdicts) / max(len(rows), 1)
    return m


def report(m: dict) -> str:
    """evaluate_rows' metrics, labelled as the official script labels them (pooled F1 (PB), per-subset f1,
    avg f1, the FlawedPositiveBench numbers)."""
    subsets = sorted(k[:-len("/pb_f1")] for k in m if k.endswith("/pb_f1"))
    lines = [("Err (PB)", "err_acc"), ("Err_Loc (PB)", "err_loc_acc"), ("Corr (PB)", "corr_acc"),
             (f"F1 (PB), pooled over {m['n_err'] + m['n_corr']} rows", "pb_f1")]
    lines += [(f"  {s} f1 ({m[s + '/n_err']} err + {m[s + '/n_corr']} clean rows)", f"{s}/pb_f1") for s in subsets]
    lines += [("avg f1 (mean of the subset f1s)", "avg_f1"), ("Precision (FPB)", "fp_precision"),
              ("Recall (FPB)", "fp_recall"), (f"F1 (FPB), {m['n_fp']} rows", "fp_f1"), ("Acc (FPB)", "fp_acc"),
              ("unparseable", "unparseable"), ("judge failed (no answer)", "judge_failed"),
              ("avg response tokens", "avg_response_tokens")]
    return "\n".join(f"{label:<44}{m[k]:.4f}" for label, k in lines if k in m)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="Evaluate a GenRM on critique rows (ProcessBench / FlawedPositiveBench).")
    ap.add_argument("--model", required=True, help="GenRM model dir (transformers format), 'oracle' (toy rows), "
                    "or an OpenAI-compatible endpoint http(s)://HOST:PORT/v1 (vLLM, SGLang)")
    ap.add_argument("--genrm-model", help="with an endpoint: the served model name (vLLM: the path given to "
                    "`vllm serve`, or its --served-model-name)")
    ap.add_argument("--data", required=True, help="critique rows (.jsonl/.json/.parquet), or 'toy' for 512 toy rows")
    ap.add_argument("--votes", type=int, default=1, help="k samples per row, majority vote (local model only)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (paper's GenRM val: 0.6, top-p 0.95)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--max-tokens-in-flight", type=int, default=16384, help="local model: memory cap, rows x (prompt "
                    "+ new tokens) decoded at once (the KV cache and the prefill grow with it; the default kept a 41M "
                    "model on the 100 sample critic rows at 1.04 GiB, uncapped 9.5 GiB at 64 new tokens; raise it on a GPU); "
                    "0: all rows at once")
    ap.add_argument("--concurrency", type=int, default=32, help="with an endpoint: requests in flight")
    ap.add_argument("--timeout", type=float, default=60.0, help="with an endpoint: seconds per attempt")
    ap.add_argument("--limit", type=int, default=0, help="first N rows only (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    remote = args.model.startswith(("http://", "https://"))
    if remote and not args.genrm_model:
        ap.error("an endpoint needs --genrm-model (the name the server serves the GenRM under)")
    if remote and args.votes != 1:
        ap.error("--votes needs a local model")
    if args.data == "toy":
        import toy  # the built-in task plugs in here: its rows (and, with --model oracle, its checker)
    rows = [r for r, _, _ in toy.critic_rows(512, seed=12345)] if args.data == "toy" else load_critic_rows(args.data)
    rows = rows[: args.limit or None]
    if remote:
        from genrm_http import HTTPJudge
        judge = HTTPJudge(args.model, args.genrm_model, args.max_new_tokens, args.temperature, args.top_p,
                          concurrency=args.concurrency, timeout=args.timeout)
    elif args.model == "oracle":  # the toy task's exact checker, through the same metrics
        import toy
        judge = toy.OracleJudge()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
        judge = ModelJudge(model.to(device).eval(), tok, args.max_new_tokens, args.temperature, args.top_p, args.votes,
                           args.seed, device, max_tokens_in_flight=args.max_tokens_in_flight or None)
    m = evaluate_rows(judge, rows)
    print(report(m))
    if remote:  # transport failures, apart from unparseable answers: they are the service's, not the GenRM's
        judge.close()
        print("failures (no verdict): " + ", ".join(f"{k} {n}" for k, n in judge.failures.items())
              + f"; retried attempts {judge.retried}")
        m["failures"] = judge.failures
    print(json.dumps(m))  # every metric, last line


if __name__ == "__main__":
    main()
