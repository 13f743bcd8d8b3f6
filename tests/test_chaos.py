"""Issue 24: a served GenRM that fails. A rollout without a verdict never trains as clean (its GRPO group is
held out of the update), an outage is waited through (--genrm-wait), and under random chaos with a server
killed and restarted every verdict lands on its own rollout (bench/chaos.py, smaller here)."""
import sys
import threading

import pytest

import fapo
import genrm
import grpo
import toy
import train
from infra import build
from bench.chaos import run_chaos
from bench.genrm_server import GenRMServer
from test_train import TINY, read_jsonl

RUN = TINY + ["--steps", "2", "--eval-every", "0", "--sft-steps", "40", "--save-every", "0"]  # some right answers


# ---- chaos: thousands of requests, out of order, failing, the server killed and restarted ----


def test_chaos_every_verdict_lands_on_its_own_rollout():
    f = run_chaos(requests=2000, seed=3, calls=8, kill_at=0.5, down_for=0.4)
    assert f["mis_assigned"] == 0 and f["checked"] == 2000 and f["still_failed"] == 0, f
    # requests = verdicts + unparseable + failures by kind; unparseable = exactly the garbage the server sent
    assert f["verdicts"] + f["unparseable"] + f["failed"] == 2000 and f["adds_up"], f
    assert sum(f["server_outcomes"].values()) == f["attempts_arrived_at_server"]  # each arrival ended one way
    assert f["server_outcomes"]["ok"] >= f["verdicts"] and f["unparseable"] > 0
    assert min(f["server_outcomes"][k] for k in ("drop", "5xx", "429", "malformed", "garbage")) > 0  # all kinds
    assert f["failures"]["refused"] > 0 and f["killed_at_request"] >= 1000 and f["retried_attempts"] > 0
    # memory: 2000 requests submitted at once, never more than concurrency x 8 of them unfinished
    assert f["peak_outstanding"] <= f["max_outstanding"] == 64 * 8 and f["peak_outstanding"] > 64


# ---- a rollout without a verdict never trains as clean ----


class FailingJudge(genrm.Judge):
    """In each call, of the correct rollouts (in order) the 1st, 4th, ... are judged clean, the 2nd, 5th, ...
    get a failed request (Verdict.error), the 3rd, 6th, ... an answer without a box (unparseable: no error;
    it counts as clean, as today)."""

    def submit(self, problems, ground_truths, step_lists, responses=None):
        kinds = [genrm.Verdict(-1, "clean"), genrm.Verdict(None, error="http_5xx: HTTP 500 injected (3 attempts)"),
                 genrm.Verdict(None, "no box here")]
        out = [kinds[k % 3] for k in range(len(problems))]
        return genrm.Pending(lambda: out)


def test_unjudged_groups_are_held_out_of_the_update(tmp_path, monkeypatch):
    """Half the rollouts are right by the rule (a stand-in verifier: the toy model after a short cold start is
    rarely right); a third of those get no verdict. Their groups are absent from the samples the update
    sees (on one rank; with peers, zero-weight fillers: the next test), whatever their reward."""
    monkeypatch.setattr(fapo, "verify", lambda response, gt: (len(response) % 2 == 0, ""))
    monkeypatch.setattr(build, "make_judges", lambda cfg, world, task, dtype: (FailingJudge(), None))
    seen = {"comps": [], "scores": [], "samples": []}
    sample, score, update, step_fn = train.Run.sample, train.PolicyObjective.score, grpo.policy_update, train.rl_step

    def sample_spy(self, *a, **k):  # the RL step's only (no eval: --test-data none)
        seen["comps"].append(sample(self, *a, **k))
        return seen["comps"][-1]

    def score_spy(self, *a, **k):
        seen["scores"].append(score(self, *a, **k))
        return seen["scores"][-1]

    def update_spy(model, opt, samples, *a, **k):
        seen["samples"].append(list(samples))
        return update(model, opt, samples, *a, **k)

    def rl_step(step, run):
        seen["samples"].append([])  # a step whose every group is held out makes no update
        return step_fn(step, run)
    monkeypatch.setattr(train.Run, "sample", sample_spy)
    monkeypatch.setattr(train.PolicyObjective, "score", score_spy)
    monkeypatch.setattr(grpo, "policy_update", update_spy)
    monkeypatch.setitem(train.PHASES, "rl", (rl_step, "steps", "lr", "warmup"))
    out = tmp_path / "run"
    train.main(RUN + ["--out", str(out), "--dynamic-sampling", "--test-data", "none", "--sft-steps", "2"])
    logged = [m for m in read_jsonl(out / "rl" / "metrics.jsonl") if "eval" not in m]
    per_step = []  # the update's samples of each step: the list after each step's marker, if any
    for x in seen["samples"]:
        if x == []:
            per_step.append([])
        else:
            per_step[-1] = x
    assert len(logged) == 2 and len(seen["scores"]) == 2 and len(per_step) == 2
    g, n_held = 4, 0
    for comps, scores, samples, m in zip(seen["comps"], seen["scores"], per_step, logged):
        held = {k // g for k, u in enumerate(scores.unjudged) if u}
        flat = {q for q in range(len(comps) // g) if len(set(scores.rewards[q * g:(q + 1) * g])) == 1}
        n = scores.counts["judged"]
        assert n == sum(scores.correct) > 3
        assert scores.counts["judge_failed"] == sum(scores.unjudged) == len(range(1, n, 3))
        assert scores.counts["unparseable"] == len(range(2, n, 3))  # unparseable: counted, not unjudged
        # a failed rollout is right by the rule and keeps its rule reward in the score, but is not trained on
        assert all(scores.correct[k] and scores.rewards[k] == 1.0 for k, u in enumerate(scores.unjudged) if u)
        want = [comps[k].tokens for k in range(len(comps)) if k // g not in held | flat]
        assert [s.response for s in samples if s.weight > 0] == want  # held-out groups: weight 0 (absent)
        assert m["groups_unjudged"] == len(held) >= 1 and m["groups_dropped"] == len(flat - held)
        n_held += len(held)
    assert n_held >= 2


def test_held_out_groups_become_zero_weight_fillers_when_another_rank_keeps_more():
    class World:  # another rank kept 12 samples: this one pads to 12
        def max(self, values):
            return [12]
    samples = [grpo.Sample([1, 2], [3, 4, k], 1.0) for k in range(8)]
    got = train.keep_groups(samples, [1], 4, World())  # group 0 held out
    assert [s.response for s in got[:4]] == [s.response for s in samples[4:]]
    assert len(got) == 12 and [s.weight for s in got] == [1.0] * 4 + [0.0] * 8
    got, dropped = train.dynamic_sampling(samples, [1, 1, 1, 1, 1, -1, 1, 1], 4, World(), held={1})
    assert [s.weight for s in got] == [0.0] * 12 and dropped == 1  # group 0 flat (dropped), group 1 held out


def test_failed_share_over_one_percent_warns():
    assert fapo.check_verdicts({"judged": 100, "judge_failed": 1, "unparseable": 0}, 0) is None
    msg = fapo.check_verdicts({"judged": 100, "judge_failed": 2, "unparseable": 0, "groups_unjudged": 2}, 4)
    assert "step 5: 2 of 100 GenRM requests failed" in msg and "2 groups held out" in msg


# ---- an outage is waited through; a dead service still stops the run ----


def test_a_toy_run_survives_a_genrm_restart(tmp_path, monkeypatch, capsys):
    """The server is killed right after RL step 1 and serves again on the same port 2 s later: step 2 waits
    for it (--genrm-wait 60), and the run finishes all its steps. (Half the rollouts count as right, so that
    every step has some to judge.)"""
    monkeypatch.setattr(fapo, "verify", lambda response, gt: (len(response) % 2 == 0, ""))
    server = GenRMServer()
    step_fn = train.rl_step
    timers = []

    def rl_step(step, run):
        m = step_fn(step, run)
        if step == 0:
            server.stop()
            timers.append(threading.Timer(2.0, server.start))
            timers[-1].start()
        return m
    monkeypatch.setitem(train.PHASES, "rl", (rl_step, "steps", "lr", "warmup"))
    out = tmp_path / "run"
    try:
        train.main(RUN + ["--out", str(out), "--genrm", server.url, "--genrm-model", "toy", "--genrm-wait", "60",
                          "--genrm-retries", "1", "--overlap-waves", "1", "--sft-steps", "2", "--test-data", "none"])
    finally:
        for t in timers:
            t.join()
        server.close()
    logged = [m for m in read_jsonl(out / "rl" / "metrics.jsonl") if "eval" not in m]
    assert [m["step"] for m in logged] == [1, 2]
    assert logged[0]["genrm_wait_s"] == 0.0 and logged[1]["genrm_wait_s"] > 1.0
    assert logged[1]["judge_failed"] == 0.0 and logged[1]["groups_unjudged"] == 0
    text = capsys.readouterr().out
    print("\n".join(line for line in text.splitlines() if "GenRM" in line), file=sys.stderr)  # -s: what it says
    assert "step 2: all " in text and "waiting for the GenRM: attempt 1" in text
    assert "step 2: the GenRM answered again after" in text


def test_a_dead_genrm_stops_the_run_past_the_wait(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fapo, "verify", lambda response, gt: (len(response) % 2 == 0, ""))
    with GenRMServer(fail=-1) as server:
        with pytest.raises(RuntimeError, match="GenRM requests failed"):
            train.main(RUN + ["--out", str(tmp_path / "x"), "--genrm", server.url, "--genrm-model", "toy",
                              "--genrm-retries", "0", "--genrm-wait", "2.5", "--sft-steps", "2", "--test-data", "none"])
    text = capsys.readouterr().out
    assert "waiting for the GenRM: attempt 2" in text and "http_5xx" in text
    assert "gave up waiting (--genrm-wait 2.5) after" in text
