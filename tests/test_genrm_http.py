"""Tests for genrm.ServedJudge against bench/genrm_server.py (127.0.0.1, a free port): the same verdicts
as the in-process judges, each failure mode counted apart and never a flag, and bounded time when the
server hangs."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT, score
import data
import fapo
import genrm
import toy
from infra import build
from bench.genrm_server import Chaos, GenRMServer, request_tag

ROWS = toy.critic_rows(40, seed=7)  # (row, problem, steps): half the solutions flawed
ARGS = ([p.text for _, p, _ in ROWS], [p.answer for _, p, _ in ROWS], [s for _, _, s in ROWS])


def first(n):
    """The judge's arguments for the first n rollouts."""
    return tuple(a[:n] for a in ARGS)


@pytest.fixture(scope="module")
def server():
    with GenRMServer() as s:
        yield s


@pytest.fixture
def fresh():
    """A server of its own, for the tests that make it misbehave."""
    with GenRMServer() as s:
        yield s


def judge_for(url, **kw):
    kw.setdefault("backoff", 0.01)
    return genrm.ServedJudge(url, "toy", max_tokens=96, **kw)


def indices(verdicts):
    return [v.first_error for v in verdicts]


# ---- right answers ----


def test_same_verdicts_as_the_oracle(server):
    with judge_for(server.url) as judge:
        got = judge(*ARGS)
    want = genrm.CheckerJudge(toy.check)(*ARGS)
    assert indices(got) == indices(want)
    assert {i for i in indices(got)} - {-1} and -1 in indices(got)  # both clean and flawed rows
    assert all(v.error is None and v.text.endswith(f"\\boxed{{{v.first_error}}}") for v in got)
    assert judge.response_tokens > 0 and sum(judge.failures.values()) == 0 and judge.retried == 0


def test_judge_prompts_with_messages_and_submit(server):
    prompts = [r.prompt for r, _, _ in ROWS]  # chat message lists, as critique rows carry them
    with judge_for(server.url) as judge:
        by_prompt = judge.judge_prompts(prompts, [len(s) for s in ARGS[2]])
        pending = judge.submit(*ARGS)
        assert indices(pending.result()) == indices(judge(*ARGS)) == indices(by_prompt)
        assert pending.done()


def test_fapo_flags_match_the_in_process_oracle(server):
    responses = ["\n\n".join(s) for s in ARGS[2]]  # every answer right: all 40 are judged
    gts = [str(a) for a in ARGS[1]]
    with judge_for(server.url) as judge:
        got = score(responses, gts, ARGS[0], genrm=judge)
    want = score(responses, gts, ARGS[0], genrm=genrm.CheckerJudge(toy.check))
    assert got.first_error == want.first_error and got.rewards == want.rewards
    # the served GenRM also counts the verdicts the other --verdict-parse would read differently: none here
    assert got.counts == {**want.counts, "parse_disagree": 0} and got.counts["flagged"] > 0


def test_api_key_is_sent_and_not_shown(fresh, monkeypatch):
    monkeypatch.setenv("GENRM_API_KEY", "sk-test-123")
    with judge_for(fresh.url) as judge:
        judge(*first(1))
    assert fresh.headers.get("Authorization") == "Bearer sk-test-123"
    assert "sk-test" not in repr(judge)


# ---- what is sent: the prompt format, and only the sampling fields that were set ----


def test_no_sampling_field_is_sent_unless_set(fresh):
    """Official requests carry max_tokens alone (the server's sampling defaults apply): make_judge with the
    flags unset sends no temperature / top_p / top_k; a value given is sent, and only that one."""
    with genrm.make_judge(fresh.url, max_tokens=96, served_model="toy", prompt_format="critic") as judge:
        judge(*first(1))
    assert set(fresh.body) == {"model", "messages", "max_tokens"} and fresh.body["max_tokens"] == 96
    assert judge.sampling == dict.fromkeys(("temperature", "top_p", "top_k"), "the server's default (not sent)")
    with genrm.make_judge(fresh.url, max_tokens=96, served_model="toy", temperature=0.6, prompt_format="critic") as judge:
        judge(*first(1))
    assert set(fresh.body) == {"model", "messages", "max_tokens", "temperature"} and fresh.body["temperature"] == 0.6
    assert judge.sampling["temperature"] == "0.6 (sent)"


def test_official_prompt_is_sent_byte_for_byte(fresh):
    """--judge-prompt official: one user message, the recipe's template around the whole response, untagged;
    the checker server reads it back and judges as the in-process oracle does."""
    responses = ["  " + "\n\n".join(s) + "\n" for s in ARGS[2][:6]]  # whitespace kept, not stripped
    problems, truths, steps = first(6)
    with judge_for(fresh.url, prompt_format="official", verdict_parse="official") as judge:
        got = judge(problems, truths, steps, responses)
    sent = {data.official_prompt(p, t, r) for p, t, r in zip(problems, truths, responses)}
    assert len(fresh.body["messages"]) == 1 and fresh.body["messages"][0]["role"] == "user"  # no system prompt
    assert fresh.body["messages"][0]["content"] in sent  # the last of 6 requests sent at once: one of them
    assert "<paragraph_0>" not in fresh.body["messages"][0]["content"]
    assert indices(got) == indices(genrm.CheckerJudge(toy.check)(problems, truths, steps))
    with pytest.raises(ValueError, match="whole response"):
        judge_for(fresh.url, prompt_format="official")(*first(1))  # steps cannot be joined back exactly


def test_fapo_sends_the_responses(fresh):
    """fapo.request_verdicts hands the judge the decoded responses: the official prompt holds each verbatim."""
    responses = ["\n\n".join(s) for s in ARGS[2][:4]]
    with judge_for(fresh.url, prompt_format="official", verdict_parse="official") as judge:
        s = score(responses, [str(a) for a in ARGS[1][:4]], ARGS[0][:4], genrm=judge)
    assert s.counts["judged"] == 4 and s.counts["judge_failed"] == 0 and s.counts["parse_disagree"] == 0
    sent = {data.official_prompt(p, str(a), r) for p, a, r in zip(ARGS[0], ARGS[1], responses)}
    assert fresh.body["messages"][0]["content"] in sent  # the last request of 4 sent at once: one of them


def test_make_judges_shows_the_sampling_used(fresh):
    import config
    import train
    cfg = config.parse_config(["--genrm", fresh.url, "--genrm-model", "toy", "--genrm-top-p", "0.9"])
    judge, _ = build.make_judges(cfg, None, build.make_task(cfg), None)
    try:
        assert cfg.genrm_sampling == {"temperature": "0.0 (sent)", "top_p": "0.9 (sent)",  # the toy preset's 0.0
                                      "top_k": "the server's default (not sent)"}
        assert judge.judge.prompt_format == "critic" and judge.judge.verdict_parse == "strict"  # toy presets
    finally:
        judge.close()


# ---- failures: counted by kind, error set, never a verdict ----


@pytest.mark.parametrize("mode, kind", [("fail", "http_5xx"), ("drop", "dropped"), ("malformed", "malformed")])
def test_failure_retried_then_given_up(fresh, mode, kind):
    setattr(fresh, mode, -1)
    with judge_for(fresh.url, retries=2) as judge:
        got = judge(*first(4))
    assert all(v.first_error is None and v.error.startswith(kind) for v in got)
    assert judge.failures[kind] == 4 and sum(judge.failures.values()) == 4
    assert fresh.requests == 4 * 3 and judge.retried == 4 * 2  # each tried retries + 1 times


@pytest.mark.parametrize("mode", ["fail", "drop", "malformed"])
def test_retry_that_succeeds(fresh, mode):
    setattr(fresh, mode, 1)  # the first request misbehaves, its retry is answered
    with judge_for(fresh.url, concurrency=1) as judge:
        got = judge(*first(3))
    assert indices(got) == indices(genrm.CheckerJudge(toy.check)(*first(3))) and all(v.error is None for v in got)
    assert sum(judge.failures.values()) == 0 and judge.retried == 1 and fresh.requests == 4


def test_garbage_is_unparseable_not_a_failure(fresh):
    fresh.garbage = -1
    with judge_for(fresh.url) as judge:
        got = judge(*first(4))
    assert all(v.first_error is None and v.error is None and v.text for v in got)
    assert sum(judge.failures.values()) == 0 and fresh.requests == 4  # an answer: not retried


def test_429_is_retried_and_counted_apart():
    with GenRMServer(chaos=Chaos(seed=0, p_429=1.0)) as s, judge_for(s.url, retries=2) as judge:
        got = judge(*first(3))
    assert all(v.first_error is None and v.error.startswith("http_429") for v in got)
    assert judge.failures["http_429"] == 3 and judge.failures["http_4xx"] == 0 and s.requests == 3 * 3
    assert s.outcomes["429"] == 9


def test_chaos_is_seeded_and_signed():
    a, b = Chaos(5, 0.01, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1), Chaos(5, 0.01, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1)
    assert [a.draw() for _ in range(50)] == [b.draw() for _ in range(50)]
    with GenRMServer(sign=True) as s, judge_for(s.url) as judge:
        prompts = judge.prompts(*first(3))
        got = judge(*first(3))
    assert [v.text.split("\n")[0] for v in got] == [request_tag(data.as_messages(p)[-1]["content"]) for p in prompts]
    assert indices(got) == indices(genrm.CheckerJudge(toy.check)(*first(3)))


def test_server_killed_and_served_again_on_the_same_port(fresh):
    url = fresh.url
    fresh.stop()
    with judge_for(url, retries=0) as judge:
        assert all(v.error.startswith(("refused", "skipped")) for v in judge(*first(2)))
    fresh.start()
    assert fresh.url == url
    with judge_for(url) as judge:
        assert indices(judge(*first(2))) == indices(genrm.CheckerJudge(toy.check)(*first(2)))


def test_submitted_requests_are_bounded(fresh):
    """40 requests submitted at once to a slow server, 2 in flight: at most 2 x 8 are ever submitted and
    unfinished (submit waits for slots), and every verdict still lands in its place."""
    fresh.slow = 0.03
    with judge_for(fresh.url, concurrency=2) as judge:
        got = judge(*first(40))
        client = judge.client
    assert client.max_outstanding == 16 and client.peak_outstanding == 16
    assert indices(got) == indices(genrm.CheckerJudge(toy.check)(*first(40)))


def test_4xx_is_not_retried():
    with GenRMServer(served_model="genrm-4b") as s, judge_for(s.url) as judge:  # judge asks for "toy"
        got = judge(*first(2))
    assert all(v.first_error is None and "does not exist" in v.error for v in got)
    assert judge.failures["http_4xx"] == 2 and s.requests == 2


def test_refused():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with judge_for(f"http://127.0.0.1:{port}/v1", retries=1) as judge:
        got = judge(*first(3))
    assert all(v.first_error is None and v.error for v in got)
    assert judge.failures["refused"] + judge.failures["skipped"] == 3 and judge.failures["refused"] >= 1


def test_hung_server_costs_the_timeout_not_the_rows(fresh):
    fresh.slow = 30.0
    with judge_for(fresh.url, timeout=0.5, retries=1, backoff=0.25) as judge:  # 16 rows, 32 in flight
        t0 = time.monotonic()
        got = judge(*first(16))
        elapsed = time.monotonic() - t0
    assert elapsed < 1.75, elapsed  # 2 attempts x 0.5 s + at most 0.25 s of backoff (+ slack)
    assert all(v.first_error is None and v.error.startswith("timeout") for v in got)
    assert judge.failures["timeout"] == 16
    # more rows than requests in flight: the first round's timeouts stop the queued rows from being sent
    with judge_for(fresh.url, timeout=0.5, retries=1, backoff=0.25, concurrency=4) as judge:
        t0 = time.monotonic()
        got = judge(*first(16))
        elapsed = time.monotonic() - t0
    assert elapsed < 1.75, elapsed
    assert judge.failures["timeout"] == 4 and judge.failures["skipped"] == 12
    assert all(v.first_error is None and v.error for v in got)


def test_failed_service_never_flags(fresh):
    fresh.fail = -1
    responses = ["\n\n".join(s) for s in ARGS[2][:8]]
    with judge_for(fresh.url, retries=1) as judge:
        s = score(responses, [str(a) for a in ARGS[1][:8]], ARGS[0][:8], genrm=judge, lam=1.0)
    assert s.counts["judged"] == 8 and s.counts["judge_failed"] == 8
    assert s.counts["flagged"] == 0 and s.counts["unparseable"] == 0 and s.rewards == [1.0] * 8


# ---- the evaluation command, the model-backed server, the script ----


def test_evaluate_through_the_endpoint(server, capsys):
    genrm.main(["--model", server.url, "--genrm-model", "toy", "--data", "toy", "--limit", "40"])
    out = capsys.readouterr().out
    m = json.loads(out.strip().splitlines()[-1])
    assert m["pb_f1"] == 1.0 and m["fp_f1"] == 1.0 and m["unparseable"] == 0 and m["judge_failed"] == 0
    assert "failures (no verdict): timeout 0" in out


def test_model_server_matches_in_process_judge(tmp_path):
    import torch
    tok = toy.tokenizer()
    model = toy.build_model(tok, seed=0).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompts = [r.prompt for r, _, _ in ROWS[:8]]
    n_steps = [len(s) for s in ARGS[2][:8]]
    local = genrm.ModelJudge(model, tok, max_new_tokens=8)
    with torch.no_grad():
        want = local.judge_prompts(prompts, n_steps)
    with GenRMServer(model_dir=str(tmp_path)) as s, genrm.ServedJudge(s.url, "toy", max_tokens=8) as judge:
        got = judge.judge_prompts(prompts, n_steps)
    assert [v.text for v in got] == [v.text for v in want]  # greedy: the same critiques, batched or not
    assert all(v.error is None for v in got) and judge.response_tokens == local.response_tokens > 0


def test_model_server_fills_unset_fields_from_generation_config(tmp_path):
    """A request without temperature is decoded at the model's generation_config temperature, as vLLM does:
    two unseeded-looking answers differ (sampled), while temperature 0 sent gives the greedy text."""
    from transformers import GenerationConfig
    tok = toy.tokenizer()
    model = toy.build_model(tok, seed=0).eval()
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.0)  # greedy: checkable exactly
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompts, n_steps = [r.prompt for r, _, _ in ROWS[:4]], [len(s) for s in ARGS[2][:4]]
    with GenRMServer(model_dir=str(tmp_path)) as s:
        assert s.answers.generation_config.temperature == 0.0
        with genrm.ServedJudge(s.url, "toy", max_tokens=8, temperature=None, top_p=None) as judge:
            unset = judge.judge_prompts(prompts, n_steps)
        assert "temperature" not in s.body
        with genrm.ServedJudge(s.url, "toy", max_tokens=8, temperature=0.0) as judge:
            greedy = judge.judge_prompts(prompts, n_steps)
    assert [v.text for v in unset] == [v.text for v in greedy]


def test_script_serves_and_stops_by_itself():
    script = os.path.join(ROOT, "bench", "genrm_server.py")
    proc = subprocess.Popen([sys.executable, script, "--port", "0", "--max-seconds", "1.5",
                             "--served-model-name", "toy"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[1]
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        models = json.loads(no_proxy.open(url + "/models", timeout=5).read())
        assert models["data"][0]["id"] == "toy"
        with judge_for(url) as judge:
            assert indices(judge(*first(4))) == indices(genrm.CheckerJudge(toy.check)(*first(4)))
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
