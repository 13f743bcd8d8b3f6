"""infra/genrm_client.py -- HTTP transport to a GenRM served behind an OpenAI-compatible endpoint (vLLM, SGLang).

At scale the GenRM runs on GPUs of its own under an inference engine (the official runs: FAPO-GenRM-4B on
SGLang servers behind a router), and every correct rollout is judged by one chat-completion request. This
module is that client: concurrent requests, a timeout on each, bounded retries with backoff, failures
counted by kind. It knows nothing of verdicts: genrm.ServedJudge builds the prompts and reads the answers.

    client = ChatClient("http://127.0.0.1:8000/v1", "FAPO-GenRM-4B", {"max_tokens": 16384})
    call = client.submit([messages, ...])     # returns at once
    call.result() -> [Reply(content, error)]  # in request order; error set when no answer came

Why apart (skip on first read): retries, timeouts and failure kinds are transport, not the method.
Tests: tests/test_genrm_http.py against bench/genrm_server.py (a stdlib server on 127.0.0.1 that answers
from the toy checker or a toy GenRM, and can be slow, fail, drop connections or send malformed JSON).
"""
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from dataclasses import dataclass

# ---- a GenRM behind an HTTP endpoint (vLLM, SGLang: OpenAI-compatible chat completions) ----
#
# At scale the GenRM runs on its own GPUs under an inference engine, and each correct rollout is one chat
# completion request. The client is the standard library (urllib in a thread pool), not requests / httpx /
# aiohttp: one blocking POST per thread is all this needs (a thread waiting on a socket releases the GIL),
# urllib has per-request timeouts, and requirements.txt stays as it is. What it lacks, connection reuse,
# costs one TCP handshake per verdict, nothing next to a GenRM writing a critique.
#
# Unlike the official client: every request has a timeout and a bounded number of retries; a request that
# still fails is a Reply with `error` set (genrm.ServedJudge makes it a verdict-less Verdict, fapo counts it
# as judge_failed, never a flag), kept apart from an answer without a usable \boxed{} (unparseable).

FAILURE_KINDS = ("timeout", "refused", "dropped", "http_5xx", "http_429", "http_4xx", "malformed", "skipped")

OUTSTANDING_PER_SLOT = 8  # requests submitted and not yet finished, at most this many per `concurrency` slot


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
        kind = "http_5xx" if e.code >= 500 else "http_429" if e.code == 429 else "http_4xx"
        return _Failure(kind, _http_error_message(e), retry=kind != "http_4xx")
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


@dataclass
class Reply:
    """One request's outcome: the completion's text, or why there is none."""
    content: str = ""
    error: str | None = None


class Call:
    """One submit's requests (ChatClient.submit): result() waits and returns [Reply] in order; done() does
    not wait. It also carries what its requests learned about the endpoint, for the client's fail-fast."""

    def __init__(self):
        self.futures = []
        self.reached = False      # some request got an HTTP response (any status): the server is up
        self.unreachable = False  # some request gave up on a timeout or a refused connection

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def result(self) -> list[Reply]:
        return [f.result() for f in self.futures]


class ChatClient:
    """Chat completions against an OpenAI-compatible endpoint (`vllm serve`, SGLang).

    Each request is one POST {base_url}/chat/completions with the given messages and `sampling` fields.
    Requests run concurrently, at most `concurrency` in flight; each attempt has `timeout` seconds
    (urllib's: per connect and per read), and a request is tried at most retries + 1 times with
    exponential backoff (backoff, 2 backoff, ...). A request that still fails gives Reply(error=...),
    counted by kind in `failures`.

    A call costs at most about (retries + 1) * timeout + backoff * (2**retries - 1) seconds when the
    server hangs, however many rows: the rows of one round run at once, and once a request of a call has
    given up on a timeout or refused connection with no response from the server to any of them, the
    call's queued requests are not sent (kind "skipped") -- the endpoint is down, and waiting a full
    timeout per round of `concurrency` rows would stall the step for nothing.

    Memory is bounded: at most `max_outstanding` = concurrency * OUTSTANDING_PER_SLOT requests are submitted
    and unfinished at any time (running or queued in the pool). submit() returns at once below that bound;
    past it, it waits for requests to finish (backpressure: the pool's queue would otherwise grow with
    every request submitted, each holding its messages, however slow the server). `peak_outstanding`
    shows the most there ever were.

    GENRM_API_KEY, when set, is sent as a Bearer token (never logged, not in repr).
    """

    def __init__(self, base_url, model, sampling: dict, concurrency=32, timeout=60.0, retries=2, backoff=0.5):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"a GenRM endpoint needs an http:// or https:// URL, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self.sampling = dict(sampling)
        self._headers = {"Content-Type": "application/json"}
        if os.environ.get("GENRM_API_KEY"):
            self._headers["Authorization"] = "Bearer " + os.environ["GENRM_API_KEY"]
        # no proxy: the GenRM is our own server; rollouts must not leave through an http_proxy of the env
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="genrm-http")
        self.max_outstanding = concurrency * OUTSTANDING_PER_SLOT
        self._slots = threading.BoundedSemaphore(self.max_outstanding)  # one per submitted, unfinished request
        self._lock = threading.Lock()  # the counters below are updated from the pool's threads
        self.outstanding = self.peak_outstanding = 0
        self.response_tokens = 0       # usage.completion_tokens summed, when the server reports it
        self.retried = 0               # attempts that failed and were tried again
        self.failures = dict.fromkeys(FAILURE_KINDS, 0)  # requests that gave no answer, by kind

    def __repr__(self):
        return f"ChatClient({self.url!r}, model={self.model!r}, timeout={self.timeout}, retries={self.retries})"

    def submit(self, message_lists) -> Call:
        """Send one request per message list and return at once."""
        call = Call()
        call.futures = [self._send(call, m) for m in message_lists]
        return call

    def _send(self, call: Call, messages):
        """Queue one request once a slot is free; its slot is given back when it ends (or is cancelled)."""
        self._slots.acquire()
        with self._lock:
            self.outstanding += 1
            self.peak_outstanding = max(self.peak_outstanding, self.outstanding)
        try:
            future = self._pool.submit(self._ask, call, messages)
        except RuntimeError:  # the pool is shut down (close()): nothing was queued
            self._release()
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _future=None):
        with self._lock:
            self.outstanding -= 1
        self._slots.release()

    def close(self):
        """Stop the pool: queued requests are cancelled, those in flight end within their timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one request --

    def _ask(self, call: Call, messages) -> Reply:
        """One answer, with retries; runs in a pool thread."""
        body = json.dumps({"model": self.model, "messages": messages, **self.sampling}).encode()
        for attempt in range(self.retries + 1):
            if call.unreachable and not call.reached:
                return self._failed(_Failure("skipped", "another request of this call found the endpoint down",
                                             False), attempt)
            if attempt:
                # exponential, with jitter so that a whole wave does not retry in lockstep
                time.sleep(self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))
            try:
                content, tokens = self._post(call, body)
            except _Failure as f:
                if f.retry and attempt < self.retries:
                    with self._lock:
                        self.retried += 1
                    continue
                if f.kind in ("timeout", "refused"):
                    call.unreachable = True
                return self._failed(f, attempt + 1)
            with self._lock:
                self.response_tokens += tokens
            return Reply(content)

    def _post(self, call: Call, body: bytes) -> tuple[str, int]:
        req = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                call.reached = True
                raw = resp.read()
        except urllib.error.HTTPError as e:
            call.reached = True
            raise _failure(e)
        except (OSError, http.client.HTTPException) as e:  # socket errors and timeouts are OSErrors
            raise _failure(e)
        return _completion(raw)

    def _failed(self, f: _Failure, attempts: int) -> Reply:
        with self._lock:
            self.failures[f.kind] += 1
        tries = f" ({attempts} attempt{'s' * (attempts != 1)})" if attempts else ""
        return Reply(error=f"{f.kind}: {f}{tries}")
