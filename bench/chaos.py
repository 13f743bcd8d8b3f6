"""bench/chaos.py -- a served GenRM under random chaos: every verdict must land on its own rollout.

Thousands of distinct toy critique requests go through genrm.ServedJudge to bench/genrm_server.py in
random-chaos mode (seeded: exponential delays, so answers complete out of order; dropped connections,
503s, 429s, malformed bodies, answers without a box), and the server is killed and served again on the
same port while they run. Then the failed ones are asked again (fapo.Judging.ask_again, what
fapo.wait_for_verdicts does in an outage) until every rollout has a verdict. Checked:

    mis-assigned    every answer starts with a hash of its own request (the server's sign=True) and its index
                    is the exact checker's for its own row; any other answer is mis-assigned (must be 0)
    accounting      requests = verdicts + unparseable + failures by kind (the client's counters), and the
                    unparseable ones are exactly the server's garbage answers
    memory          requests submitted and unfinished never exceed the client's bound (concurrency x 8),
                    though all of them are submitted at once; peak RSS printed
    finishes        the first pass and the re-asking end, within a bounded time

    python bench/chaos.py                          # 5000 requests, the figures in docs/genrm-chaos.md
    python bench/chaos.py --requests 20000 --seed 1
tests/test_chaos.py runs a smaller one (2000 requests).
"""
import json
import os
import resource
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's flat modules

import fapo  # noqa: E402
import genrm  # noqa: E402
import toy  # noqa: E402
from bench.genrm_server import GARBAGE, Chaos, GenRMServer, request_tag  # noqa: E402
from data import as_messages  # noqa: E402


def rows(n, seed):
    """n distinct toy solutions (problem, answer, steps): distinct prompts, so a swapped answer shows."""
    out, seen = [], set()
    for _, p, steps in toy.critic_rows(2 * n + 16, seed=seed):
        key = (p.text, tuple(steps))
        if key not in seen:
            seen.add(key)
            out.append((p.text, p.answer, steps))
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} distinct toy rows")


def run_chaos(requests=5000, seed=0, concurrency=64, calls=10, delay_mean=0.01, delay_max=0.3, p_drop=0.03,
              p_5xx=0.03, p_429=0.03, p_malformed=0.01, p_garbage=0.03, kill_at=0.4, down_for=0.5, retries=2,
              backoff=0.2, timeout=10.0, max_rounds=20, log=print) -> dict:
    """The run described above; returns its figures (and raises nothing: the caller checks them)."""
    t0 = time.monotonic()
    work = rows(requests, seed)
    problems, truths, steps = [w[0] for w in work], [str(w[1]) for w in work], [w[2] for w in work]
    want = [i for i, _ in (toy.check(p, t, s) for p, t, s in zip(problems, truths, steps))]
    chaos = Chaos(seed, delay_mean, delay_max, p_drop, p_5xx, p_429, p_malformed, p_garbage)
    server = GenRMServer(chaos=chaos, sign=True)
    judge = genrm.ServedJudge(server.url, "toy", max_tokens=96, concurrency=concurrency, timeout=timeout,
                              retries=retries, backoff=backoff, prompt_format="critic")
    prompts = judge.prompts(problems, truths, steps)
    tags = [request_tag(as_messages(p)[-1]["content"]) for p in prompts]
    outage = {}

    def killer():  # kill the server once kill_at of the requests have arrived, serve again down_for s later
        while server.requests < kill_at * requests and not outage.get("cancel"):
            time.sleep(0.005)
        if outage.get("cancel"):
            return
        server.stop()
        outage["killed_at_request"] = server.requests
        time.sleep(down_for)
        server.start()
        outage["down_s"] = down_for
    kill = threading.Thread(target=killer, daemon=True)
    kill.start()
    try:
        # the first pass: `calls` calls (as train.py's waves), all submitted before any result is read
        per = -(-requests // calls)
        parts = []
        for c in range(calls):
            part = range(c * per, min((c + 1) * per, requests))
            sent = fapo.Judging([True] * len(part), list(range(len(part))), [steps[i] for i in part],
                                [judge.submit([problems[i] for i in part], [truths[i] for i in part],
                                              [steps[i] for i in part])],
                                [(problems[i], truths[i], None) for i in part], judge)
            parts.append(sent)
        judging = parts[0]
        for p in parts[1:]:
            judging = judging + p
        first = judging.verdicts()
        t_first = time.monotonic() - t0
        outage["cancel"] = True
        kill.join()
        outage.pop("cancel")
        failures = dict(judge.failures)
        answered = sum(v.error is None for v in first)
        figures = {"requests": requests, "verdicts": sum(v.first_error is not None for v in first),
                   "unparseable": sum(v.first_error is None and v.error is None for v in first),
                   "failures": failures, "failed": sum(failures.values()), "retried_attempts": judge.retried,
                   "attempts_arrived_at_server": server.requests, "server_outcomes": dict(server.outcomes),
                   "garbage_received": sum(v.error is None and v.text.endswith(GARBAGE) for v in first),
                   "max_outstanding": judge.client.max_outstanding,
                   "peak_outstanding": judge.client.peak_outstanding, **outage, "first_pass_s": round(t_first, 2)}
        figures["adds_up"] = requests == answered + figures["failed"] and \
            figures["garbage_received"] == figures["unparseable"]
        # ask again for the failed ones, the same prompts, until every rollout has a verdict
        rounds = 0
        while (failed := judging.failed()) and rounds < max_rounds:
            rounds += 1
            judging = judging.ask_again(failed)
        final = judging.verdicts()
        wrong = 0
        for k, v in enumerate(final):
            if v.error:
                continue
            own = v.text.startswith(tags[k] + "\n")
            wrong += not own or (v.first_error is not None and v.first_error != want[k]) or (v.first_error is None and
                                                                                    not v.text.endswith(GARBAGE))
        figures.update({"reask_rounds": rounds, "still_failed": sum(bool(v.error) for v in final),
                        "mis_assigned": wrong, "checked": sum(v.error is None for v in final),
                        "total_s": round(time.monotonic() - t0, 2),
                        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        figures["peak_outstanding"] = judge.client.peak_outstanding
        return figures
    finally:
        outage["cancel"] = True
        judge.close()
        server.close()


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="Chaos against the test GenRM server: verdicts must land on their own "
                                             "rollouts.")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--down-for", type=float, default=0.5, help="seconds the killed server stays down")
    args = ap.parse_args(argv)
    f = run_chaos(args.requests, args.seed, args.concurrency, down_for=args.down_for)
    print(json.dumps(f, indent=1))
    ok = f["mis_assigned"] == 0 and f["adds_up"] and f["still_failed"] == 0 and \
        f["peak_outstanding"] <= f["max_outstanding"]
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
