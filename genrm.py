"""genrm.py -- the generative reward model (GenRM) as FAPO's judge: running one, in process or served.

The GenRM reads a problem, the ground-truth answer and a solution (--judge-prompt: the whole response untagged,
as the official run sends it, data.official_prompt; or split into tagged paragraphs, FAPO-Critic's training
format, data.critic_prompt), reasons, and puts the index of the first wrong step (or -1 for "no error") in
\\boxed{}. FAPO uses it to flag flawed positives; it is itself trained with GRPO on the stepwise reward
(paper, FAPO-Critic):

    R(t, t*) = -1                      if t is unparseable, or the flawed/clean verdict is wrong
             = +1                      if t = t* = -1                        (clean, said clean)
             = 1 - |t - t*| / n        if t, t* >= 0                         (flawed, located)

i.e. outcome +1/-1 plus process -|t - t*|/n when both say flawed.

    (critic.py                                  the verdict (parse_index, parse_official, vote) and the reward above)
    Verdict, Pending, Judge                     a judge's answer; verdicts on their way; the one judge interface
    ModelJudge, ServedJudge, CheckerJudge, AuditedJudge   in-process model, HTTP endpoint, exact checker, audit
    FunctionJudge, as_judge                     a plain function as a judge
    make_judge(spec, ...)                       'none' | 'oracle' | a model dir | http://HOST:PORT/v1 -> a Judge
    evaluate_rows                               a judge over critique rows, scored by processbench.py (ours and
                                                the official script's table, labelled)

Evaluate a GenRM on critique rows (FAPO-Critic / ProcessBench rows, ours or the official eval format with
extra_info.raw_info.{label, final_answer_correct}; or 512 toy rows):

    python genrm.py --model DIR --data rows.jsonl [--votes 4]   # decoded as the paper validated: T 0.6, top-p 0.95,
                                                                # 8192 new tokens (--setting greedy: T 0, 1024)
    python genrm.py --model oracle --data toy      # the toy checker (toy.py): every metric 1.0
    python genrm.py --model http://127.0.0.1:8000/v1 --genrm-model NAME --data rows.jsonl   # a served GenRM
"""
import contextlib
import json
from dataclasses import dataclass

import torch

from critic import VERDICT_PARSES, vote
from data import JUDGE_PROMPTS, Row, as_messages, check_critic_rows, encode_prompt, judge_prompt, load_critic_rows
from data import parse_critic_prompt
from infra import fsdp
from infra.genrm_client import ChatClient
from processbench import official_metrics, report, rows_metrics
from sampler import eos_ids, generate

# ---- judges: one interface, four kinds ----


@dataclass
class Verdict:
    """What a judge says about one solution."""
    first_error: int | None  # first wrong step, -1 for clean; None: no usable verdict (never a flag)
    text: str = ""           # the critique the GenRM wrote (the checker's own for an exact checker)
    error: str | None = None  # why no verdict was obtained at all (prompt too long, service down, ...)


def as_verdict(v) -> Verdict:
    """A forker's plain function may answer with bare indices (int | None): a Verdict either way."""
    return v if isinstance(v, Verdict) else Verdict(v)


class Pending:
    """Verdicts on their way: result() waits for them (once) and returns [Verdict] in request order."""

    def __init__(self, get, done=lambda: True):
        self._get, self._done, self._value = get, done, None

    def done(self) -> bool:
        return self._value is not None or self._done()

    def result(self) -> list[Verdict]:
        if self._value is None:
            self._value = [as_verdict(v) for v in self._get()]
        return self._value


class Judge:
    """FAPO's judge. Every judge answers two questions, the second through the first's prompt:

        judge.submit(problems, ground_truths, step_lists, responses) -> Pending   (FAPO: policy rollouts)
        judge.judge_prompts(prompts, n_steps) -> [Verdict]     (evaluation: ready-made critique rows)

    A GenRM's prompt is data.judge_prompt(prompt_format, ...): 'official' shows the whole response (responses:
    the decoded texts; step_lists still give n_steps), 'critic' the tagged steps. Its critique is read with
    verdict_parse ('official': parse_official, 'strict': parse_index) by read(), which also counts, per step,
    the verdicts the two parsers disagree on (take_counts: parse_disagree).

    `judge(...)` is submit(...).result(). A judge whose submit returns before the verdicts exist (a served
    GenRM: background = True) lets train.py judge one wave of rollouts while the next decodes. ready()
    brackets a step's judging (an in-process GenRM is gathered once for it); reseed(seed) gives a sampling
    GenRM the step's stream, so a resumed run repeats its critiques; take_counts() hands over extra
    per-step counters (an audit's). Subclasses implement judge_prompts, and override the rest as needed.
    """
    background = False  # submit works in the background (served judges)
    votes = 1           # samples per verdict
    context_len = None  # the GenRM's context, for the start-up budget check (models only)
    template_tokens = 0  # tokens of the critique prompt around the solution (models only)
    sampling = {}       # a sampling GenRM's decoding values, each with where it came from (the printed config)

    def __init__(self, prompt_format="critic", verdict_parse="strict"):
        if prompt_format not in JUDGE_PROMPTS or verdict_parse not in VERDICT_PARSES:
            raise ValueError(f"prompt_format in {JUDGE_PROMPTS}, verdict_parse in {VERDICT_PARSES}; got "
                             f"{prompt_format!r}, {verdict_parse!r}")
        self.prompt_format, self.verdict_parse = prompt_format, verdict_parse
        self.response_tokens = 0  # critique tokens decoded, for cost accounting
        self.counts = {}          # per-step counters, handed over (and reset) by take_counts

    def judge_prompts(self, prompts, n_steps) -> list[Verdict]:
        raise NotImplementedError

    def prompts(self, problems, ground_truths, step_lists, responses=None) -> list[str]:
        responses = [None] * len(problems) if responses is None else responses
        return [judge_prompt(self.prompt_format, p, g, s, r)
                for p, g, s, r in zip(problems, ground_truths, step_lists, responses)]

    def read(self, texts: list[str], n_steps: int) -> tuple[int | None, str]:
        """vote(texts, ...) with this judge's parser; counts a disagreement of the other parser's verdict."""
        index, text = vote(texts, n_steps, self.verdict_parse)
        other = vote(texts, n_steps, "strict" if self.verdict_parse == "official" else "official")[0]
        self.counts["parse_disagree"] = self.counts.get("parse_disagree", 0) + (index != other)
        return index, text

    def submit(self, problems, ground_truths, step_lists, responses=None) -> Pending:
        verdicts = self.judge_prompts(self.prompts(problems, ground_truths, step_lists, responses),
                                      [len(s) for s in step_lists])
        return Pending(lambda: verdicts)

    def __call__(self, problems, ground_truths, step_lists, responses=None) -> list[Verdict]:
        return self.submit(problems, ground_truths, step_lists, responses).result()

    def ready(self):
        return contextlib.nullcontext(self)

    def reseed(self, seed: int) -> None:
        pass

    def take_counts(self) -> dict:
        counts = self.counts  # a subclass calls Judge.__init__, which makes it
        self.counts = dict.fromkeys(counts, 0)  # the same keys every step: ranks sum them in one all-reduce
        return counts

    def close(self) -> None:
        pass


ENGINE_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}  # vLLM's / SGLang's when nothing sets one


def model_sampling(generation_config, **given) -> tuple[dict, dict]:
    """(values, shown): each of temperature / top_p / top_k as given, else as a serving engine would pick it
    for this model (vLLM --generation-config auto, SGLang's model defaults): the value the GenRM's
    generation_config sets (to_diff_dict: fields it sets away from transformers' defaults), else the engine's
    (ENGINE_DEFAULTS). do_sample is ignored, as the engines ignore it: the official runs served the GenRM."""
    diff = generation_config.to_diff_dict() if generation_config is not None else {}
    values, shown = {}, {}
    for k, v in given.items():
        src = "set" if v is not None else "generation_config" if diff.get(k) is not None else "engine default"
        values[k] = v if v is not None else diff.get(k) if diff.get(k) is not None else ENGINE_DEFAULTS[k]
        shown[k] = f"{values[k]} ({src})"
    return values, shown


class ModelJudge(Judge):
    """A transformers GenRM in this process (FSDP-sharded under the trainer, gathered for each step).

    Each solution is shown in prompt_format (chat template), decoded with the sampler; `votes` > 1 samples k
    verdicts and votes (vote). temperature / top_p / top_k None: as a server would decode this model
    (model_sampling: its generation_config, else 1.0 / 1.0 / off); `sampling` says which. A prompt that
    does not fit the model's context gets Verdict(None, error="too long"), counted apart by fapo.score_rollouts.
    """

    def __init__(self, model, tokenizer, max_new_tokens=1024, temperature=0.0, top_p=1.0, votes=1, seed=0,
                 device="cpu", eos_ids=None, context_len=None, max_tokens_in_flight=None, top_k=0,
                 prompt_format="critic", verdict_parse="strict"):
        super().__init__(prompt_format, verdict_parse)
        self.model, self.tok, self.votes, self.device = model, tokenizer, votes, device
        values, self.sampling = model_sampling(getattr(model, "generation_config", None), temperature=temperature,
                                               top_p=top_p, top_k=top_k)
        self.counts = {"parse_disagree": 0}
        self.kw = dict(max_new_tokens=max_new_tokens, **values,
                       eos_token_id=eos_ids if eos_ids is not None else tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                       max_tokens_in_flight=max_tokens_in_flight)
        self.context_len = context_len or getattr(model.config, "max_position_embeddings", None) or 10**9
        self.kw["context_len"] = self.context_len
        empty = judge_prompt(prompt_format, "", "", [""], "")
        self.template_tokens = len(encode_prompt(tokenizer, empty)) + 16  # + the answer
        self.reseed(seed)

    def reseed(self, seed):
        """A fresh generator: the trainer reseeds per step, so a resumed run samples the same critiques."""
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    def ready(self):
        return _gathered_judge(self)

    def judge_prompts(self, prompts, n_steps):
        """Verdicts for ready-made prompts (chat messages or strings) with their step counts."""
        ids = [encode_prompt(self.tok, p) for p in prompts]
        ok = [i for i, x in enumerate(ids) if len(x) + self.kw["max_new_tokens"] <= self.context_len]
        comps = generate(self.model, [ids[i] for i in ok], n=self.votes, generator=self.gen, **self.kw) if ok else []
        self.response_tokens += sum(len(c.tokens) for c in comps)
        out = [Verdict(None, error=f"prompt + max new tokens > context {self.context_len}") for _ in prompts]
        for j, i in enumerate(ok):
            texts = [self.tok.decode(c.tokens, skip_special_tokens=True) for c in comps[j * self.votes:(j + 1) * self.votes]]
            out[i] = Verdict(*self.read(texts, n_steps[i]))
        return out


@contextlib.contextmanager
def _gathered_judge(judge):
    with fsdp.gathered(judge.model):  # a collective: every rank enters, even one with nothing to judge
        yield judge


class ServedJudge(Judge):
    """A GenRM behind an OpenAI-compatible endpoint (`vllm serve`, SGLang): one chat completion per solution,
    sent by infra/genrm_client.py (timeouts, bounded retries, failures counted by kind in `failures`).
    The verdict is read() of choices[0].message.content; a request that still fails is
    Verdict(None, error=...), judge_failed for fapo, never a flag. Only the sampling fields given (not
    None) are sent: the official requests carry max_tokens alone, so the server's defaults apply."""
    background = True

    def __init__(self, base_url, model, max_tokens, temperature=0.0, top_p=1.0, concurrency=32, timeout=60.0,
                 retries=2, backoff=0.5, top_k=None, prompt_format="critic", verdict_parse="strict"):
        super().__init__(prompt_format, verdict_parse)
        given = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
        sent = {k: v for k, v in given.items() if v is not None}
        self.sampling = {k: f"{v} (sent)" if v is not None else "the server's default (not sent)"
                         for k, v in given.items()}
        self.counts = {"parse_disagree": 0}
        self.client = ChatClient(base_url, model, {"max_tokens": max_tokens, **sent}, concurrency, timeout, retries,
                                 backoff)

    def __repr__(self):
        return f"ServedJudge({self.client!r})"

    @property
    def failures(self) -> dict:
        return self.client.failures

    @property
    def retried(self) -> int:
        return self.client.retried

    def submit(self, problems, ground_truths, step_lists, responses=None) -> Pending:
        return self.submit_prompts(self.prompts(problems, ground_truths, step_lists, responses),
                                   [len(s) for s in step_lists])

    def submit_prompts(self, prompts, n_steps) -> Pending:
        """Send the requests and return at once."""
        call = self.client.submit([as_messages(p) for p in prompts])

        def verdicts():
            replies = call.result()
            self.response_tokens = self.client.response_tokens
            return [Verdict(None, error=r.error) if r.error else Verdict(*self.read([r.content], n))
                    for r, n in zip(replies, n_steps)]
        return Pending(verdicts, call.done)

    def judge_prompts(self, prompts, n_steps):
        return self.submit_prompts(prompts, n_steps).result()

    def close(self):
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CheckerJudge(Judge):
    """An exact checker as a GenRM: check(problem, ground_truth, steps) -> (first wrong step or -1, critique).
    The toy task's (toy.check) is the demo's oracle. A problem the checker cannot read (ValueError) gets
    Verdict(None): no verdict, never a flag."""

    def __init__(self, check):
        super().__init__()
        self.check = check

    def submit(self, problems, ground_truths, step_lists, responses=None) -> Pending:
        verdicts = [self._verdict(p, g, s) for p, g, s in zip(problems, ground_truths, step_lists)]
        return Pending(lambda: verdicts)

    def judge_prompts(self, prompts, n_steps):
        out = []
        for p in prompts:
            try:
                problem, truth, steps = parse_critic_prompt(p if isinstance(p, str) else p[-1]["content"])
            except ValueError:
                out.append(Verdict(None))
                continue
            out.append(self._verdict(problem, truth, steps))
        return out

    def _verdict(self, problem, ground_truth, steps):
        try:
            index, text = self.check(problem, ground_truth, steps)
        except ValueError:
            return Verdict(None)
        return Verdict(index, text)


class AuditedJudge(Judge):
    """A learned GenRM whose every verdict is also asked of a reference judge (an exact checker) on the same
    rollouts: its verdicts pass through unchanged; take_counts() returns (and resets) oracle_flagged, agree."""

    def __init__(self, judge, reference: Judge):
        super().__init__()
        self.judge, self.reference = as_judge(judge), reference
        inner = self.judge
        self.background, self.context_len, self.template_tokens = inner.background, inner.context_len, inner.template_tokens
        self.sampling = inner.sampling
        self.counts = {"oracle_flagged": 0, "agree": 0}

    @contextlib.contextmanager
    def ready(self):
        with self.judge.ready():
            yield self

    def reseed(self, seed):
        self.judge.reseed(seed)

    def submit(self, problems, ground_truths, step_lists, responses=None) -> Pending:
        pending = self.judge.submit(problems, ground_truths, step_lists, responses)
        truth = self.reference(problems, ground_truths, step_lists)

        def audited():
            verdicts = pending.result()
            for v, t in zip(verdicts, truth):
                flawed = t.first_error not in (None, -1)
                self.counts["oracle_flagged"] += flawed
                self.counts["agree"] += flawed == (v.first_error not in (None, -1))
            return verdicts
        return Pending(audited, pending.done)

    def judge_prompts(self, prompts, n_steps):
        return self.judge.judge_prompts(prompts, n_steps)

    def take_counts(self):
        counts, self.counts = self.counts, {k: 0 for k in self.counts}
        return {**self.judge.take_counts(), **counts}

    def close(self):
        self.judge.close()


class FunctionJudge(Judge):
    """A plain function as a judge: fn(problems, ground_truths, step_lists) -> [Verdict | int | None]
    (it sees the steps, not the responses)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def submit(self, problems, ground_truths, step_lists, responses=None) -> Pending:
        verdicts = self.fn(problems, ground_truths, step_lists)
        return Pending(lambda: verdicts)


def as_judge(judge) -> Judge | None:
    """A Judge as is; a plain function (a forker's lambda) wrapped as one; None stays None (no judging)."""
    return judge if judge is None or isinstance(judge, Judge) else FunctionJudge(judge)


def ready(judge: Judge | None):
    """`with ready(judge) as j:` readies a judge for a step (None: nothing to ready, j is None)."""
    return judge.ready() if judge is not None else contextlib.nullcontext(None)


def make_judge(spec: str, *, checker=None, world=None, dtype=torch.float32, max_tokens=1024, temperature=None,
               top_p=None, top_k=None, votes=1, seed=0, context_len=0, max_tokens_in_flight=None, served_model="genrm",
               concurrency=32, timeout=300.0, retries=2, prompt_format="official",
               verdict_parse="official") -> Judge | None:
    """The judge a --genrm value names: 'none' (None: nobody is judged, the baseline), 'oracle' (the task's
    exact checker), http(s)://HOST:PORT/v1 (a served GenRM), or a local model directory (loaded sharded on
    the meta device, frozen: FAPO does not train the GenRM it judges with). Sampling left None is the
    server's default (not sent), or in process what a server would use (model_sampling)."""
    if spec == "none":
        return None
    if spec == "oracle":
        if checker is None:
            raise ValueError("--genrm oracle needs a task with an exact checker (the toy task)")
        return CheckerJudge(checker)
    if spec.startswith(("http://", "https://")):
        return ServedJudge(spec, served_model, max_tokens, temperature, top_p, concurrency=concurrency,
                           timeout=timeout, retries=retries, top_k=top_k, prompt_format=prompt_format,
                           verdict_parse=verdict_parse)
    from transformers import AutoConfig, AutoTokenizer
    world = world or fsdp.World()
    tok = AutoTokenizer.from_pretrained(spec)
    context = context_len or AutoConfig.from_pretrained(spec).max_position_embeddings
    model = fsdp.load_pretrained(spec, world, dtype, configure=lambda m: setattr(
        m.config, "max_position_embeddings", context)).eval().requires_grad_(False)
    return ModelJudge(model, tok, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                      votes=votes, seed=seed, device=world.device, eos_ids=eos_ids(tok, model), context_len=context,
                      max_tokens_in_flight=max_tokens_in_flight, prompt_format=prompt_format,
                      verdict_parse=verdict_parse)


# ---- evaluation on critique rows ----


def evaluate_rows(judge: Judge, rows: list[Row]) -> dict:
    """rows_metrics of a judge over critique rows (checked first), with its mean critique length, and under
    "official" the official script's table of the same verdicts (official_metrics, group by group)."""
    check_critic_rows(rows, "<rows>")
    verdicts = [as_verdict(v) for v in judge.judge_prompts([r.prompt for r in rows],
                                                            [r.extra_info["total_steps"] for r in rows])]
    m = rows_metrics(rows, verdicts)
    m["avg_response_tokens"] = judge.response_tokens / max(len(rows) * judge.votes, 1)
    m["official"] = official_metrics([r.data_source for r in rows], [r.ground_truth for r in rows],
                                     [r.extra_info.get("final_answer_correct", True) for r in rows],
                                     [v.first_error for v in verdicts])
    return m


# how `python genrm.py` decodes a model GenRM; "official" is the official validation of FAPO-GenRM-4B
EVAL_SETTINGS = {"official": dict(temperature=0.6, top_p=0.95, max_new_tokens=8192),
                 "greedy": dict(temperature=0.0, top_p=1.0, max_new_tokens=1024)}


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="Evaluate a GenRM on critique rows (ProcessBench / FlawedPositiveBench).")
    ap.add_argument("--model", required=True, help="GenRM model dir (transformers format), 'oracle' (toy rows), "
                    "or an OpenAI-compatible endpoint http(s)://HOST:PORT/v1 (vLLM, SGLang)")
    ap.add_argument("--genrm-model", help="with an endpoint: the served model name (vLLM: the path given to "
                    "`vllm serve`, or its --served-model-name)")
    ap.add_argument("--data", required=True, help="critique rows (.jsonl/.json/.parquet), or 'toy' for 512 toy rows")
    ap.add_argument("--votes", type=int, default=1, help="k samples per row, majority vote (local model only)")
    ap.add_argument("--setting", default="official", choices=list(EVAL_SETTINGS), help="sampling and length: "
                    "genrm.EVAL_SETTINGS (official: the paper's validation; greedy: short and deterministic)")
    ap.add_argument("--temperature", type=float, default=None, help="overrides the setting's (0 = greedy)")
    ap.add_argument("--top-p", type=float, default=None, help="overrides the setting's")
    ap.add_argument("--verdict-parse", default="official", choices=VERDICT_PARSES, help="official: int() of the "
                    "last box, no range check, votes over the raw box strings (first seen wins a tie), as the "
                    "official script (which runs the winning box as Python: read only as an integer here); strict: -1..n-1 only, ties to "
                    "the smallest index")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="overrides the setting's")
    ap.add_argument("--max-tokens-in-flight", type=int, default=16384, help="local model: memory cap, rows x (prompt "
                    "+ new tokens) decoded at once (docs/memory.md; raise it on a GPU); 0: all rows at once")
    ap.add_argument("--concurrency", type=int, default=32, help="with an endpoint: requests in flight")
    ap.add_argument("--timeout", type=float, default=60.0, help="with an endpoint: seconds per attempt")
    ap.add_argument("--limit", type=int, default=0, help="first N rows only (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    decode = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in EVAL_SETTINGS[args.setting].items()}
    remote = args.model.startswith(("http://", "https://"))
    if remote and not args.genrm_model:
        ap.error("an endpoint needs --genrm-model (the name the server serves the GenRM under)")
    if remote and args.votes != 1:
        ap.error("--votes needs a local model")
    if args.model == "none":
        ap.error("--model none judges nothing")
    checker = None
    if args.data == "toy" or args.model == "oracle":
        import toy  # the built-in task (it imports only data.py): its critique rows and its exact checker
        checker = toy.check  # reads toy problems; on any other row it gives no verdict
    rows = toy.critic_eval_rows(512, seed=12345) if args.data == "toy" else load_critic_rows(args.data)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    print(f"evaluation setting: {args.setting} (" + ", ".join(f"{k} {v}" for k, v in decode.items()) + ")")
    judge = make_judge(args.model, checker=checker, dtype=dtype, max_tokens=decode["max_new_tokens"],
                       temperature=decode["temperature"], top_p=decode["top_p"], votes=args.votes, seed=args.seed, served_model=args.genrm_model,
                       concurrency=args.concurrency, timeout=args.timeout, verdict_parse=args.verdict_parse,
                       max_tokens_in_flight=args.max_tokens_in_flight or None)
    with judge.ready():
        m = evaluate_rows(judge, rows[: args.limit or None])
    if judge.sampling:
        print("sampling: " + ", ".join(f"{k} {v}" for k, v in judge.sampling.items()))
    print(report(m))
    if remote:  # transport failures, apart from unparseable answers: they are the service's, not the GenRM's
        judge.close()
        print("failures (no verdict): " + ", ".join(f"{k} {n}" for k, n in judge.failures.items())
              + f"; retried attempts {judge.retried}")
        m["failures"] = judge.failures
    print(json.dumps(m))  # every metric, last line


if __name__ == "__main__":
    main()
