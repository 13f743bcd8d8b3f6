"""evaluate.py -- what train.py measures on held-out rows, on every rank at once.

    evaluate_policy(run, tag)   per data_source and pooled: avg@n accuracy, unbiased pass@k, flawed ratio (by the
                                eval judge: the task's exact checker when it has one, else the training GenRM),
                                unparseable / failed verdicts, mean response length
    evaluate_critic(run, tag)   a GenRM in training: its verdicts on held-out critique rows, with genrm.py's
                                metrics (ProcessBench F1, FlawedPositiveBench), the same as `python genrm.py`

A room of its own because both the policy's and the GenRM's evaluation are the paper's numbers, not the RL
step: the rollouts are scored by the run's objective (train.PolicyObjective: R_rule, the eval judge, FAPO's reward)
and the rates come from fapo.rollout_metrics / processbench.rows_metrics, as during training; only the summing over
ranks and sources lives here. `run` is train.Run.
"""
import torch.distributed as dist

import fapo
import genrm
import processbench
from infra.runlog import dump_rollouts

# ---- the policy ----

SCORED = ("n", "correct", "judged", "flagged", "unparseable", "judge_failed")  # fapo.score_rollouts' counts
COUNTS = SCORED + ("prompts", "passk", "tokens")


def evaluate_policy(run, tag):
    """Every test prompt (this rank's share), sampled n times: n is --eval-samples, or its source's
    --eval-repeats. Scored by the eval judge; summed per source over ranks."""
    cfg, world = run.cfg, run.world
    mine = list(range(world.rank, len(run.test), world.size))
    by_n = {}
    for i in mine:
        by_n.setdefault(samples_for(run.test[i].data_source, run.repeats, cfg.eval_samples), []).append(i)
    per = {}  # source -> summed counts
    for n, group in sorted(by_n.items()):
        seed = cfg.seed + 7919 * world.rank + (0 if n == cfg.eval_samples else 104729 * n)
        comps = run.sample([run.test_ids[i] for i in group], n, seed, cfg.eval_temperature, cfg.eval_top_p)
        texts = run.decode(comps)
        each = [i for i in group for _ in range(n)]
        rows, problems = [run.test[i] for i in each], [run.test_problems[i] for i in each]
        whole = fapo.Scores([0.0] * len(rows), [False] * len(rows), [None] * len(rows), {}, [""] * len(rows))
        for source in sorted({r.data_source for r in rows}):  # scored per source: its counts are its own
            part = [k for k, r in enumerate(rows) if r.data_source == source]
            with genrm.ready(run.eval_judge) as judge:
                judging = run.objective.request([rows[k].ground_truth for k in part], [problems[k] for k in part],
                                                [texts[k] for k in part], judge)
                s = run.objective.score([rows[k] for k in part], [texts[k] for k in part],
                                        [len(comps[k].tokens) for k in part], judging)
            for j, k in enumerate(part):
                whole.rewards[k], whole.correct[k] = s.rewards[j], s.correct[j]
                whole.first_error[k], whole.critiques[k] = s.first_error[j], s.critiques[j]
            c = per.setdefault(source, dict.fromkeys(COUNTS, 0.0))
            for key in SCORED:
                c[key] += s.counts[key]
            c["prompts"] += len(part) // n
            c["passk"] += sum(fapo.pass_at_k(n, sum(s.correct[j:j + n]), cfg.pass_k) for j in range(0, len(part), n))
            c["tokens"] += sum(len(comps[k].tokens) for k in part)
        if n == min(by_n):  # one dump per eval: the first prompts of the most common setting
            run.dump("eval", step_of(tag), rows, problems, texts, comps, whole, n, f"eval_{tag}")
    return {"eval": tag, **pooled_rates(per, run, world)}


def step_of(tag):
    return int(tag[4:]) if tag.startswith("step") and tag[4:].isdigit() else 0


def samples_for(source, repeats, default):
    return next((n for key, n in repeats.items() if key in source), default)


def pooled_rates(per, run, world):
    """Sum each source's counts over ranks (every rank must know every source), then rates: pooled, and
    per source when there are several."""
    cfg = run.cfg
    every = [None] * world.size
    dist.all_gather_object(every, sorted(per))
    sources = sorted({s for part in every for s in part})
    summed = world.sum_named({(s, f): per.get(s, {}).get(f, 0) for s in sources for f in COUNTS})
    per_source = {s: {f: summed[s, f] for f in COUNTS} for s in sources}

    def rates(c, n_label):
        m = fapo.rollout_metrics(c)
        return {f"acc@{n_label}": m["acc"], "flawed_ratio": m["flawed_ratio"],
                f"pass@{cfg.pass_k}": c["passk"] / max(c["prompts"], 1), "response_length": c["tokens"] / max(c["n"], 1),
                "unparseable": m["unparseable"], "judge_failed": m["judge_failed"]}
    pooled = {f: sum(t[f] for t in per_source.values()) for f in COUNTS}
    out = {f"eval_{k}": v for k, v in rates(pooled, cfg.eval_samples).items()}
    if len(sources) > 1:
        for s in sources:
            n = samples_for(s, run.repeats, cfg.eval_samples)
            out.update({f"eval_{s}/{k}": v for k, v in rates(per_source[s], n).items()})
    return out


# ---- a GenRM in training ----


def evaluate_critic(run, tag):
    """The GenRM being trained, as a judge of held-out critique rows (this rank's share), decoded at the eval
    temperature; the verdicts are gathered and scored with processbench.rows_metrics."""
    cfg, world = run.cfg, run.world
    mine = list(range(world.rank, len(run.test), world.size))
    judge = genrm.ModelJudge(run.model, run.tokenizer, max_new_tokens=cfg.max_response_len,
                             temperature=cfg.eval_temperature, top_p=cfg.eval_top_p, seed=cfg.seed, device=world.device,
                             eos_ids=run.eos_ids, context_len=run.context,
                             max_tokens_in_flight=cfg.max_tokens_in_flight or None)
    training = run.model.training
    run.model.eval()
    with judge.ready():  # every rank gathers, even one with no rows
        verdicts = judge.judge_prompts([run.test[i].prompt for i in mine],
                                       [run.test[i].extra_info["total_steps"] for i in mine])
    run.model.train(training)
    every = [None] * world.size
    dist.all_gather_object(every, list(zip(mine, verdicts)))
    got = dict(p for part in every for p in part)
    m = processbench.rows_metrics(run.test, [got[i] for i in range(len(run.test))])
    return {"eval": tag, **{f"eval_{k}": v for k, v in m.items()}}
