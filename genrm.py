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
    critic_rewards / check_critic_rows          a batch of GenRM rollouts scored; critic rows validated
    Verdict, ModelJudge                         a judge's answer; a transformers GenRM as FAPO's judge
    HTTPJudge                                   a GenRM served by vLLM / SGLang (OpenAI-compatible API)

Evaluate a GenRM on critique rows (FAPO-Critic / ProcessBench row format, or 512 toy rows):

    python genrm.py --model DIR --data rows.jsonl [--votes 4 --temperature 0.6 --top-p 0.95]
    python genrm.py --model oracle --data toy      # the toy checker (toy.py): every metric 1.0
    python genrm.py --model http://127.0.0.1:8000/v1 --genrm-model NAME --data rows.jsonl   # a served GenRM
"""
import http.client
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
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
    if content is None or not _INT.fullmatch(content.strip()):
        return None
    k = int(content.strip())
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
    """Critic rows need an int label in -1..n-1 (a strict-integer string is converted) and n = total_steps."""
    for i, r in enumerate(rows, 1):
        if isinstance(r.ground_truth, str) and _INT.fullmatch(r.ground_truth.strip()):
            r.ground_truth = int(r.ground_truth.strip())
        n = r.extra_info.get("total_steps")
        if not isinstance(n, int):
            raise ValueError(f"{path}: row {i}: field 'extra_info.total_steps': missing (a critic row needs it)")
        if not isinstance(r.ground_truth, int) or not -1 <= r.ground_truth < n:
            raise ValueError(f"{path}: row {i}: field 'reward_model.ground_truth': expected the first wrong step "
                             f"in -1..{n - 1}, got {r.ground_truth!r}")


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
    right (FlawedPositiveBench uses those rows only; all rows when not given); subsets: names, for
    ProcessBench's per-subset F1 averaged over subsets. Empty denominators give 0.0.
    """
    preds, labels = list(preds), list(labels)
    out = _processbench(preds, labels)
    if subsets is not None:
        per = {}
        for name in sorted(set(subsets)):
            idx = [i for i, s in enumerate(subsets) if s == name]
            per[name] = _processbench([preds[i] for i in idx], [labels[i] for i in idx])
            out.update({f"{name}/{k}": v for k, v in per[name].items()})
        out["pb_f1"] = _safe_div(sum(m["pb_f1"] for m in per.values()), len(per))
    keep = range(len(preds)) if final_correct is None else [i for i, c in enumerate(final_correct) if c]
    flag = [preds[i] != -1 for i in keep]
    truth = [labels[i] != -1 for i in keep]
    tp = sum(f and t for f, t in zip(flag, truth))
    precision, recall = _safe_div(tp, sum(flag)), _safe_div(tp, sum(truth))
    out.update({"fp_precision": precision, "fp_recall": recall, "fp_f1": _f1(precision, recall),
                "fp_acc": _safe_div(sum(f == t for f, t in zip(flag, truth)), len(flag)), "n_fp": len(flag)})
    return out


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


# ---- a GenRM behind an HTTP endpoint (vLLM, SGLang: OpenAI-compatible chat completions) ----
#
# At scale the GenRM runs on its own GPUs under an inference engine, and each correct rollout is one chat
# completion request. The client is the standard library (urllib in a thread pool), not requests / httpx /
# aiohttp: one blocking POST per thread is all this needs (a thread waiting on a socket releases the GIL),
# urllib has per-request timeouts, and requirements.txt stays as it is. What it lacks, connection reuse,
# costs one TCP handshake per verdict, nothing next to a GenRM writing a critique.
#
# Unlike the official client: every request has a timeout and a bounded number of retries; a request that
# still fails is a Verdict with `error` set (fapo counts it as judge_failed, never a flag), kept apart from
# an answer without a usable \boxed{} (unparseable); the verdict is parsed, never eval'ed.

FAILURE_KINDS = ("timeout", "refused", "dropped", "http_5xx", "http_4xx", "malformed", "skipped")


class _Failure(Exception):
    """One failed attempt: its kind (one of FAILURE_KINDS), a short reason, and whether to try again."""

    def __init__(self, kind: str, reason: str, retry: bool):
        super().__init__(reason)
        self.kind, self.retry = kind, retry


def _http_error_message(e: urllib.error.HTTPError) -> str:
    """The server's own error message when it sent one (vLLM: {"error": {"message": ...}}), shortened."""
    try:
        body = json.loads(e.read(2000) or b"{}")
        err = body.get("error") if isinstance(body, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else body.get("message")
    except (ValueError, AttributeError, OSError):
        msg = ""
    return f"HTTP {e.code} {msg or e.reason}"[:200]


def _failure(e: Exception) -> _Failure:
    """Classify what urllib raised. Retried: anything that may pass on a second try (no connection, a
    timeout, a dropped connection, a 5xx or 429). Not retried: other 4xx, which say our request is wrong
    (unknown model name, prompt longer than the server's context) and would fail the same way again."""
    if isinstance(e, urllib.error.HTTPError):
        return _Failure("http_5xx" if e.code >= 500 else "http_4xx", _http_error_message(e),
                        retry=e.code >= 500 or e.code == 429)
    reason = e.reason if isinstance(e, urllib.error.URLError) else e  # urllib wraps errors of the connect
    if isinstance(reason, TimeoutError):
        return _Failure("timeout", "timed out", retry=True)
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.HTTPException)):
        # reached the server, which closed the connection without a (whole) response
        return _Failure("dropped", f"connection dropped ({type(reason).__name__})", retry=True)
    return _Failure("refused", f"cannot connect ({reason})"[:200], retry=True)  # refused, unreachable, DNS


def _completion(raw: bytes) -> tuple[str, int]:
    """(content, completion tokens) of an OpenAI chat completion body; a 'malformed' _Failure if it is not one.
    A null content (e.g. cut off inside a reasoning block) is an answer without a verdict: ''."""
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError(type(content).__name__)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise _Failure("malformed", f"not a chat completion ({type(e).__name__})", retry=True)
    usage = data.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return content, tokens if isinstance(tokens, int) else 0


class PendingVerdicts:
    """Verdicts being fetched (HTTPJudge.submit): result() waits and returns [Verdict] in order; done() does
    not wait. It also carries what its requests learned about the endpoint, for HTTPJudge's fail-fast."""

    def __init__(self):
        self.futures = []
        self.reached = False      # some request got an HTTP response (any status): the server is up
        self.unreachable = False  # some request gave up on a timeout or a refused connection

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def result(self) -> list[Verdict]:
        return [f.result() for f in self.futures]


class HTTPJudge:
    """A GenRM served behind an OpenAI-compatible endpoint (`vllm serve`, SGLang) as FAPO's judge.

    Each solution is one POST {base_url}/chat/completions with the FAPO-Critic prompt as the user message;
    the verdict is parse_index of choices[0].message.content. Requests run concurrently, at most
    `concurrency` in flight; each attempt has `timeout` seconds (urllib's: per connect and per read), and
    a request is tried at most retries + 1 times with exponential backoff (backoff, 2 backoff, ...).
    A request that still fails gives Verdict(None, error=...), counted by kind in `failures`.

    A call costs at most about (retries + 1) * timeout + backoff * (2**retries - 1) seconds when the
    server hangs, however many rows: the rows of one round run at once, and once a request of a call has
    given up on a timeout or refused connection with no response from the server to any of them, the
    call's queued requests are not sent (kind "skipped") -- the endpoint is down, and waiting a full
    timeout per round of `concurrency` rows would stall the step for nothing.

    GENRM_API_KEY, when set, is sent as a Bearer token (never logged, not in repr).
    """
    votes = 1  # one sample per verdict (evaluate_rows divides token counts by it)

    def __init__(self, base_url, model, max_tokens, temperature=0.0, top_p=1.0, concurrency=32, timeout=60.0,
                 retries=2, backoff=0.5):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"HTTPJudge needs an http:// or https:// URL, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self.sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        self._headers = {"Content-Type": "application/json"}
        if os.environ.get("GENRM_API_KEY"):
            self._headers["Authorization"] = "Bearer " + os.environ["GENRM_API_KEY"]
        # no proxy: the GenRM is our own server; rollouts must not leave through an http_proxy of the env
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="genrm-http")
        self._lock = threading.Lock()  # the counters below are updated from the pool's threads
        self.response_tokens = 0       # usage.completion_tokens summed, when the server reports it
        self.retried = 0               # attempts that failed and were tried again
        self.failures = dict.fromkeys(FAILURE_KINDS, 0)  # requests that gave no verdict, by kind

    def __repr__(self):
        return f"HTTPJudge({self.url!r}, model={self.model!r}, timeout={self.timeout}, retries={self.retries})"

    # -- the judge interface --

    def __call__(self, problems, ground_truths, step_lists) -> list[Verdict]:
        return self.submit(problems, ground_truths, step_lists).result()

    def judge_prompts(self, prompts, n_steps) -> list[Verdict]:
        """Verdicts for ready-made prompts (chat messages or strings) with their step counts."""
        return self.submit_prompts(prompts, n_steps).result()

    def submit(self, problems, ground_truths, step_lists) -> PendingVerdicts:
        """Send the requests and return at once: the trainer judges one wave while the next one decodes."""
        prompts = [genrm_prompt(p, g, s) for p, g, s in zip(problems, ground_truths, step_lists)]
        return self.submit_prompts(prompts, [len(s) for s in step_lists])

    def submit_prompts(self, prompts, n_steps) -> PendingVerdicts:
        pending = PendingVerdicts()
        pending.futures = [self._pool.submit(self._ask, pending, p, n) for p, n in zip(prompts, n_steps)]
        return pending

    def close(self):
        """Stop the pool: queued requests are cancelled, those in flight end within their timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one request --

    def _ask(self, pending: PendingVerdicts, prompt, n_steps: int) -> Verdict:
        """One verdict, with retries; runs in a pool thread."""
        body = json.dumps({"model": self.model, "messages": as_messages(prompt), **self.sampling}).encode()
        for attempt in range(self.retries + 1):
            if pending.unreachable and not pending.reached:
                return self._failed(_Failure("skipped", "another request of this call found the endpoint down",
                                             False), attempt)
            if attempt:
                # exponential, with jitter so that a whole wave does not retry in lockstep
                time.sleep(self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))
            try:
                content, tokens = self._post(pending, body)
            except _Failure as f:
                if f.retry and attempt < self.retries:
                    with self._lock:
                        self.retried += 1
                    continue
                if f.kind in ("timeout", "refused"):
                    pending.unreachable = True
                return self._failed(f, attempt + 1)
            with self._lock:
                self.response_tokens += tokens
            return Verdict(parse_index(content, n_steps), content)

    def _post(self, pending: PendingVerdicts, body: bytes) -> tuple[str, int]:
        req = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                pending.reached = True
                raw = resp.read()
        except urllib.error.HTTPError as e:
            pending.reached = True
            raise _failure(e)
        except (OSError, http.client.HTTPException) as e:  # socket errors and timeouts are OSErrors
            raise _failure(e)
        return _completion(raw)

    def _failed(self, f: _Failure, attempts: int) -> Verdict:
        with self._lock:
            self.failures[f.kind] += 1
        tries = f" ({attempts} attempt{'s' * (attempts != 1)})" if attempts else ""
        return Verdict(None, error=f"{f.kind}: {f}{tries}")


def evaluate_rows(judge, rows: list[Row]) -> dict:
    """critic_metrics of a judge over critique rows (FAPO-Critic / ProcessBench format): label =
    reward_model.ground_truth, n = extra_info.total_steps, subset = data_source, FlawedPositiveBench
    restricted to rows with extra_info.final_answer_correct when that field is present."""
    verdicts = [as_verdict(v) for v in judge.judge_prompts([r.prompt for r in rows],
                                                            [r.extra_info["total_steps"] for r in rows])]
    preds = [v.index for v in verdicts]
    fc = [r.extra_info.get("final_answer_correct", True) for r in rows]
    m = critic_metrics(preds, [r.ground_truth for r in rows], final_correct=fc,
                       subsets=[r.data_source for r in rows])
    m["avg_response_tokens"] = judge.response_tokens / max(len(rows) * judge.votes, 1)
    # a verdict missing because the judge got no answer (service down, prompt too long) is not the
    # GenRM's fault: counted apart from an answer without a usable \boxed{}
    m["unparseable"] = sum(v.index is None and not v.error for v in verdicts) / max(len(rows), 1)
    m["judge_failed"] = sum(bool(v.error) for v in verdicts) / max(len(rows), 1)
    return m


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
                    "+ new tokens) decoded at once (the KV cache and the prefill grow with it; the default keeps a "
                    "39M model on the 100 sample critic rows under 2 GB of RAM; raise it on a GPU); 0: all rows at once")
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
    rows = [r for r, _, _ in toy.critic_rows(512, seed=12345)] if args.data == "toy" else load_rows(args.data)
    rows = rows[: args.limit or None]
    if remote:
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
    for k, v in m.items():
        print(f"{k:<28}{v:.4f}" if isinstance(v, float) else f"{k:<28}{v}")
    if remote:  # transport failures, apart from unparseable answers: they are the service's, not the GenRM's
        judge.close()
        print("failures (no verdict): " + ", ".join(f"{k} {n}" for k, n in judge.failures.items())
              + f"; retried attempts {judge.retried}")
        m["failures"] = judge.failures
    print(json.dumps(m))


if __name__ == "__main__":
    main()
