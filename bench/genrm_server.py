"""bench/genrm_server.py -- a stand-in for vLLM / SGLang: an OpenAI-compatible GenRM endpoint on 127.0.0.1.

It answers POST /v1/chat/completions (and GET /v1/models) with the toy checker's critiques (the prompt is
read back with data.parse_critic_prompt or data.parse_official_prompt, then toy.critique) or with a toy GenRM
model's decode (transformers, through sampler.generate; requests that arrive together are decoded as one
batch). Sampling fields a request leaves out are the model's, as vLLM picks them (genrm.model_sampling:
its generation_config, else temperature 1.0, top-p 1.0); `body` keeps the last request's JSON.

    with GenRMServer() as server:                    # the checker; port 0 = a free port
        judge = genrm.ServedJudge(server.url, "toy", max_tokens=96)
    with GenRMServer(model_dir="out/genrm/rl/hf"):  # a learned toy GenRM

It can be told to misbehave (attributes, changeable while it runs): slow = S seconds of sleep before
each answer; and for the first K requests (K < 0: every request), in this order of precedence:
    fail=K       HTTP 500
    drop=K       close the connection without a response
    malformed=K  HTTP 200 whose body is not JSON
    garbage=K    a valid completion whose content has no \\boxed{}
served_model="NAME" answers 404 to any other model name, as vLLM does.

Random chaos (Chaos(seed, ...), attribute `chaos`; applied after the counted modes above): each request
draws from one seeded stream (in arrival order) a delay (exponential, mean delay_mean s, capped at
delay_max s: answers complete out of order) and at most one misbehaviour, with probabilities p_drop
(connection closed), p_5xx (HTTP 503), p_429 (HTTP 429), p_malformed (200, not JSON), p_garbage (a
completion without a box). `outcomes` counts what the server did, by kind ("ok" = a verdict written).
sign=True starts every critique (garbage too) with "[request <sha256 of the user message, 16 hex>]", so
that a client can check that each answer came back on its own request (bench/chaos.py). stop() kills the
server (the socket closed, answers still being delayed dropped); start() serves again on the same port.

As a script (stops by itself after --max-seconds, default 3600):

    python bench/genrm_server.py --port 8011 [--model DIR] [--served-model-name NAME]
                                 [--slow S] [--fail K] [--drop K] [--malformed K] [--garbage K]
"""
import hashlib
import json
import os
import queue
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's flat modules

import data  # noqa: E402
import fapo  # noqa: E402
import toy  # noqa: E402
from data import encode_prompt  # noqa: E402

MODES = ("fail", "drop", "malformed", "garbage")  # checked in this order
GARBAGE = "Paragraph 0 looks fine, I think the answer is probably right."


def request_tag(content: str) -> str:
    """What a signed answer starts with: the request's user message, hashed (bench/chaos.py checks it)."""
    return f"[request {hashlib.sha256(content.encode()).hexdigest()[:16]}]"


class Chaos:
    """Seeded random misbehaviour, one draw per request (see the module doc)."""
    KINDS = ("drop", "5xx", "429", "malformed", "garbage")

    def __init__(self, seed=0, delay_mean=0.0, delay_max=1.0, p_drop=0.0, p_5xx=0.0, p_429=0.0, p_malformed=0.0,
                 p_garbage=0.0):
        self.rng, self.delay_mean, self.delay_max = random.Random(seed), delay_mean, delay_max
        self.p = {"drop": p_drop, "5xx": p_5xx, "429": p_429, "malformed": p_malformed, "garbage": p_garbage}
        if sum(self.p.values()) > 1:
            raise ValueError("the chaos probabilities sum to more than 1")

    def draw(self) -> tuple[float, str | None]:
        """(delay in seconds, misbehaviour or None); call under the server's lock."""
        delay = min(self.rng.expovariate(1 / self.delay_mean), self.delay_max) if self.delay_mean > 0 else 0.0
        u, edge = self.rng.random(), 0.0
        for kind in self.KINDS:
            edge += self.p[kind]
            if u < edge:
                return delay, kind
        return delay, None

# ---- answers: the checker, or a model ----


class CheckerAnswers:
    """The exact checker's critique of a GenRM prompt (toy problems only; anything else: no verdict)."""

    def __init__(self):
        self.tok = toy.tokenizer()  # only to report token counts in `usage`

    def complete(self, messages, max_tokens, temperature, top_p, top_k) -> tuple[str, int, int]:
        try:
            problem, _, steps = _read_prompt(messages[-1]["content"])
            text = toy.critique(toy.parse_problem(problem), steps)
        except ValueError:
            text = "This is not a toy problem: no verdict."
        n_prompt = len(self.tok(messages[-1]["content"], add_special_tokens=False)["input_ids"])
        return text, n_prompt, len(self.tok(text, add_special_tokens=False)["input_ids"])


def _read_prompt(text: str) -> tuple[str, str, list[str]]:
    """(problem, ground truth, steps) of a GenRM prompt in either format (official: steps as split_steps)."""
    try:
        return data.parse_critic_prompt(text)
    except ValueError:
        problem, truth, response = data.parse_official_prompt(text)
        return problem, truth, fapo.split_steps(response)


class ModelAnswers:
    """A transformers GenRM decoded with sampler.generate. Handler threads queue their prompt and wait; one
    decode thread takes everything queued as one batch (a crude version of vLLM's continuous batching),
    so concurrent requests cost one batched decode, as with the in-process ModelJudge."""

    def __init__(self, model_dir, seed=0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.context = self.model.config.max_position_embeddings
        self.generation_config = self.model.generation_config  # the defaults of what a request leaves out
        self.gen = torch.Generator().manual_seed(seed)  # used by temperature > 0 only
        self.queue = queue.Queue()
        threading.Thread(target=self._decode_loop, daemon=True, name="genrm-server-decode").start()

    def complete(self, messages, max_tokens, temperature, top_p, top_k) -> tuple[str, int, int]:
        import genrm  # what vLLM does with the fields a request leaves out
        values, _ = genrm.model_sampling(self.generation_config, temperature=temperature, top_p=top_p, top_k=top_k)
        temperature, top_p, top_k = values["temperature"], values["top_p"], values["top_k"]
        ids = encode_prompt(self.tok, messages)
        if len(ids) + max_tokens > self.context:  # vLLM answers 400 here
            raise ValueError(f"This model's maximum context length is {self.context} tokens; the prompt has "
                             f"{len(ids)} and max_tokens is {max_tokens}.")
        job = {"ids": ids, "key": (max_tokens, temperature, top_p, top_k), "done": threading.Event()}
        self.queue.put(job)
        job["done"].wait()
        if "error" in job:
            raise RuntimeError(job["error"])
        return job["text"], len(ids), job["n_tokens"]

    def _decode_loop(self):
        import sampler
        while True:
            jobs = [self.queue.get()]
            while not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            for key in dict.fromkeys(j["key"] for j in jobs):  # one generate call per sampling setting
                group = [j for j in jobs if j["key"] == key]
                max_tokens, temperature, top_p, top_k = key
                pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
                try:
                    comps = sampler.generate(
                        self.model, [j["ids"] for j in group], max_new_tokens=max_tokens, temperature=temperature,
                        top_p=top_p, top_k=top_k, eos_token_id=self.tok.eos_token_id, pad_token_id=pad, generator=self.gen,
                        context_len=self.context)
                    for j, c in zip(group, comps):
                        j["text"] = self.tok.decode(c.tokens, skip_special_tokens=True)
                        j["n_tokens"] = len(c.tokens)
                except Exception as e:  # answered as a 500 rather than leaving the handlers waiting
                    for j in group:
                        j["error"] = f"{type(e).__name__}: {e}"
                for j in group:
                    j["done"].set()


# ---- the HTTP server ----


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):  # quiet: tests make hundreds of requests
        pass

    def _send_json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": {"message": message, "code": status}})

    def do_GET(self):
        if self.path.rstrip("/") != "/v1/models":
            return self._error(404, f"no route {self.path}")
        self._send_json(200, {"object": "list", "data": [{"id": self.server.owner.name, "object": "model"}]})

    def do_POST(self):
        owner = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        mode, delay, stopping = *owner._arrive(dict(self.headers)), owner.stopping
        if (owner.slow or delay) and stopping.wait(owner.slow + delay):
            return owner._count("killed")  # shutting down: drop the connection rather than answer late
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        if mode in ("fail", "5xx"):
            owner._count("5xx")
            return self._error(500 if mode == "fail" else 503, "injected failure")
        if mode == "429":
            owner._count("429")
            return self._error(429, "injected: too many requests")
        if mode == "drop":
            owner._count("drop")
            self.close_connection = True
            return  # nothing written: the client sees the connection closed without a response
        if mode == "malformed":
            owner._count("malformed")
            return self._send(200, b'{"choices": [{"message": {"content": "\\\\boxed{')
        try:
            req = owner.body = json.loads(body)
            messages, name = req["messages"], req.get("model")
            given = [req.get(k) for k in ("temperature", "top_p", "top_k")]  # None: left to the model's defaults
            sampling = (int(req.get("max_tokens") or 1024), *(None if v is None else float(v) for v in given[:2]),
                        None if given[2] is None else int(given[2]))
        except (ValueError, KeyError, TypeError) as e:
            return self._error(400, f"bad request: {type(e).__name__}")
        if owner.served_model is not None and name != owner.served_model:
            return self._error(404, f"The model `{name}` does not exist.")
        try:
            text, n_prompt, n_out = owner.answers.complete(messages, *sampling)
        except ValueError as e:
            return self._error(400, str(e))
        except RuntimeError as e:
            return self._error(500, str(e))
        if mode == "garbage":
            text = GARBAGE
        if owner.sign:
            text = request_tag(messages[-1]["content"]) + "\n" + text
        owner._count("garbage" if mode == "garbage" else "ok")
        self._send_json(200, {
            "id": f"chatcmpl-{owner.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True       # a handler still sleeping (slow=...) never keeps the process alive
    request_queue_size = 256    # a wave of concurrent connects must not overflow the listen backlog


class GenRMServer:
    """The server on 127.0.0.1 (port 0: a free one), running in a daemon thread from construction.
    Use as a context manager (or call close()); `url` is the base URL for genrm.ServedJudge; `requests` counts
    POSTs, `headers` keeps the last request's headers, `body` its JSON (None before any)."""

    def __init__(self, model_dir=None, port=0, served_model=None, slow=0.0, fail=0, drop=0, malformed=0,
                 garbage=0, seed=0, chaos: Chaos | None = None, sign=False):
        self.answers = ModelAnswers(model_dir, seed) if model_dir else CheckerAnswers()
        self.name = served_model or model_dir or "toy-checker"
        self.served_model, self.slow, self.chaos, self.sign = served_model, slow, chaos, sign
        self.fail, self.drop, self.malformed, self.garbage = fail, drop, malformed, garbage
        self.requests, self.headers, self.body = 0, {}, None
        self.outcomes = dict.fromkeys(("ok", "garbage", "drop", "5xx", "429", "malformed", "killed"), 0)
        self._lock = threading.Lock()
        self.port, self.httpd = port, None
        self.start()

    def start(self):
        """Serve (again) on self.port; the first start takes a free port when it is 0."""
        if self.httpd is not None:
            raise RuntimeError("already serving")
        self.stopping = threading.Event()
        self.httpd = _Server(("127.0.0.1", self.port), _Handler)  # allow_reuse_address: the same port at once
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="genrm-server")
        self._thread.start()

    def stop(self):
        """Kill it: no more connections accepted (clients are refused), answers still delayed dropped."""
        if self.httpd is None:
            return
        self.stopping.set()  # wakes the slow handlers, which then drop their connections
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd = None

    def _arrive(self, headers) -> tuple[str | None, float]:
        """Count a request and pick its misbehaviour, if any (each mode's K counts down; K < 0 is forever;
        then the chaos draw), and its extra delay."""
        with self._lock:
            self.requests += 1
            self.headers = headers
            for mode in MODES:
                k = getattr(self, mode)
                if k:
                    setattr(self, mode, k - 1 if k > 0 else k)
                    return mode, 0.0
            if self.chaos is not None:
                delay, mode = self.chaos.draw()
                return mode, delay
        return None, 0.0

    def _count(self, outcome):
        with self._lock:
            self.outcomes[outcome] += 1

    def close(self):
        self.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="A toy OpenAI-compatible GenRM server on 127.0.0.1 (tests, demos).")
    ap.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    ap.add_argument("--model", help="a toy GenRM model dir (transformers); default: the exact checker")
    ap.add_argument("--served-model-name", help="answer 404 to requests for any other model name")
    ap.add_argument("--slow", type=float, default=0.0, help="seconds to sleep before each answer")
    for mode, what in [("fail", "HTTP 500"), ("drop", "close without a response"),
                       ("malformed", "200 with a body that is not JSON"), ("garbage", "a critique without a box")]:
        ap.add_argument(f"--{mode}", type=int, default=0, help=f"{what} for the first K requests (-1: all)")
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long, whatever happens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chaos-delay", type=float, default=0.0, help="random chaos: mean extra delay (s, exponential)")
    ap.add_argument("--chaos-delay-max", type=float, default=1.0, help="random chaos: the delay's cap (s)")
    for kind in Chaos.KINDS:
        ap.add_argument(f"--p-{kind}", type=float, default=0.0, help=f"random chaos: probability of {kind}")
    ap.add_argument("--sign", action="store_true", help="start each critique with a hash of its request")
    ap.add_argument("--kill-every", type=float, default=0.0, help="kill the server every S seconds (0: never) ...")
    ap.add_argument("--down-for", type=float, default=5.0, help="... and serve again on the same port after S s")
    args = ap.parse_args(argv)
    p = {kind: getattr(args, f"p_{kind}") for kind in Chaos.KINDS}
    chaos = Chaos(args.seed, args.chaos_delay, args.chaos_delay_max, p["drop"], p["5xx"], p["429"], p["malformed"],
                  p["garbage"]) if args.chaos_delay or any(p.values()) else None
    with GenRMServer(args.model, args.port, args.served_model_name, args.slow, args.fail, args.drop,
                     args.malformed, args.garbage, args.seed, chaos=chaos, sign=args.sign) as server:
        print(f"serving {server.url} (model {server.name}); stopping after {args.max_seconds:g} s", flush=True)
        end = time.monotonic() + args.max_seconds
        try:
            while time.monotonic() < end:
                if not args.kill_every:
                    time.sleep(max(end - time.monotonic(), 0))
                    break
                time.sleep(max(min(args.kill_every, end - time.monotonic()), 0))
                if time.monotonic() >= end:
                    break
                server.stop()
                print(f"killed; serving again in {args.down_for:g} s", flush=True)
                time.sleep(args.down_for)
                server.start()
                print(f"serving {server.url} again", flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
