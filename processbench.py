"""processbench.py -- the GenRM's benchmark numbers, from its verdicts on critique rows: ProcessBench (is the
first wrong step found, and a clean solution called clean) and FlawedPositiveBench (are flawed positives
flagged), as the paper defines them and, beside them, as the official evaluation script computes them.

    ProcessBench:  Err = P(pred != -1 | flawed), Err_Loc = P(pred = label | flawed), Corr = P(pred = -1 | clean),
                   F1 (PB) = 2 Err_Loc Corr / (Err_Loc + Corr)
    FPB:           precision / recall / F1 of "flagged" against "flawed", on rows whose final answer is right

    critic_metrics(preds, labels, ...)   ours: pooled over all rows, each row in one subset (pb_subset)
    official_metrics(...)                the official script's table (FAPO repo fapo/fapo_genrm/evaluate_genrm.py)
    rows_metrics(rows, verdicts)         both, from checked critique rows and a judge's verdicts
    report(m)                            labelled as the official script labels them

A room of its own: genrm.py is the GenRM (verdict, reward, judges); this is how the paper scores one. It
imports only data.py, so genrm.py's CLI and evaluate.py both read it.
"""
import math

from data import Row

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



# ---- the official evaluation script's table (FAPO repo fapo/fapo_genrm/evaluate_genrm.py) ----

OFFICIAL_SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")  # the script's order, matched by endswith


def _mean(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else math.nan  # np.mean of nothing: nan (the script warns, goes on)


def _hmean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else math.nan  # numpy's 0/0; a nan input stays nan


def _div(a, b) -> float:
    return a / b if b else math.nan  # where the script divides Python numbers by 0 it stops: nan here


def official_metrics(sources, labels, final_correct, preds) -> dict:
    """The script's metrics, one dict per group: data_source.split("/")[0], in first-seen order. A group whose
    name holds "PRM" gets the step metrics (official_group); any other the script's outcome branch."""
    groups = {}
    for row in zip(sources, labels, final_correct, preds):
        groups.setdefault(row[0].split("/")[0], []).append(row)
    return {name: (official_group if "PRM" in name else _outcome_group)(rows) for name, rows in groups.items()}


def official_group(rows) -> dict:
    """One PRM group, rows (data_source, label, final_correct, pred): ProcessBench pooled over the group
    (None counts as flagged, not located); per subset of OFFICIAL_SUBSETS by data_source.endswith -- so
    omnimath rows are in math too -- its f1; avg_f1 = the mean of those 4 (nan if one is: a subset without
    rows); FlawedPositiveBench on the rows with a right final answer."""
    err = [(d, l, p) for d, l, _, p in rows if l != -1]
    cor = [(d, p) for d, l, _, p in rows if l == -1]
    out = {"count": len(rows), "err_acc": _mean(p != -1 for *_, p in err),
           "err_loc_acc": _mean(p == l for _, l, p in err), "corr_acc": _mean(p == -1 for _, p in cor)}
    out["pb_f1"] = _hmean(out["err_loc_acc"], out["corr_acc"])
    for sub in OFFICIAL_SUBSETS:
        out[f"{sub}_f1"] = _hmean(_mean(p == l for d, l, p in err if d.endswith(sub)),
                                  _mean(p == -1 for d, p in cor if d.endswith(sub)))
    out["avg_f1"] = sum(out[f"{sub}_f1"] for sub in OFFICIAL_SUBSETS) / len(OFFICIAL_SUBSETS)
    pos = [(l, p) for _, l, c, p in rows if c]
    return {**out, **_official_fpb([p != -1 for _, p in pos], [l != -1 for l, _ in pos],
                                   _mean((p == -1) == (l == -1) for l, p in pos))}


def _outcome_group(rows) -> dict:
    """The script's branch for a group without "PRM" in its name: a verdict 0 says wrong, 1 says right."""
    err, cor = [p for _, l, _, p in rows if l != -1], [p for _, l, _, p in rows if l == -1]
    pos = [(l, p) for _, l, c, p in rows if c]
    out = {"count": len(rows), "err_acc": _mean(p == 0 for p in err), "corr_acc": _mean(p == 1 for p in cor)}
    return {**out, **_official_fpb([p == 0 for _, p in pos], [l != -1 for l, _ in pos],
                                   _mean((p == 1) == (l == -1) for l, p in pos))}


def _official_fpb(flag, truth, acc) -> dict:
    tp = sum(f and t for f, t in zip(flag, truth))
    precision, recall = _div(tp, sum(flag)), _div(tp, sum(truth))
    f1 = math.nan if math.isnan(precision + recall) else _div(2 * precision * recall, precision + recall)
    return {"fp_precision": precision, "fp_recall": recall, "fp_f1": f1, "fp_acc": acc}


def rows_metrics(rows: list[Row], verdicts) -> dict:
    """critic_metrics of verdicts on (checked) critique rows: label, subset = pb_subset(data_source),
    FlawedPositiveBench restricted to rows with final_answer_correct when that field is present; plus
    unparseable (an answer without a usable \\boxed{}) and judge_failed (no answer at all), counted apart.
    verdicts: genrm.Verdict (index, error) per row."""
    fc = [r.extra_info.get("final_answer_correct", True) for r in rows]
    m = critic_metrics([v.first_error for v in verdicts], [r.ground_truth for r in rows], final_correct=fc,
                       subsets=[pb_subset(r.data_source) for r in rows])
    m["unparseable"] = sum(v.first_error is None and not v.error for v in verdicts) / max(len(rows), 1)
    m["judge_failed"] = sum(bool(v.error) for v in verdicts) / max(len(rows), 1)
    return m


_OFFICIAL_LINES = [("Err (PB)", "err_acc"), ("Err_Loc (PB)", "err_loc_acc"), ("Corr (PB)", "corr_acc"),
                   ("F1 (PB), pooled over the group", "pb_f1")]
_OFFICIAL_LINES += [(f"  {s} f1 (data_source.endswith)", f"{s}_f1") for s in OFFICIAL_SUBSETS]
_OFFICIAL_LINES += [("avg f1 (mean of the 4 subset f1s)", "avg_f1"), ("Precision (FPB)", "fp_precision"),
                    ("Recall (FPB)", "fp_recall"), ("F1 (FPB)", "fp_f1"), ("Acc (FPB)", "fp_acc")]


def report(m: dict) -> str:
    """evaluate_rows' metrics: ours first, then the official script's table per group (official_metrics; its
    labels). Ours: ProcessBench pooled over all rows, each row in one subset (pb_subset), FlawedPositiveBench, and
    what the official script does not count (unparseable answers, failed requests, critique length)."""
    out = []
    subsets = sorted(k[:-len("/pb_f1")] for k in m if k.endswith("/pb_f1"))
    lines = [(f"F1 (PB), pooled over {m['n_err'] + m['n_corr']} rows", "pb_f1")]
    lines += [(f"  {s} f1 ({m[s + '/n_err']} err + {m[s + '/n_corr']} clean rows)", f"{s}/pb_f1") for s in subsets]
    lines += [("avg f1 (mean of these subset f1s)", "avg_f1"), ("Precision (FPB)", "fp_precision"),
              ("Recall (FPB)", "fp_recall"), (f"F1 (FPB), {m['n_fp']} rows", "fp_f1"), ("Acc (FPB)", "fp_acc"),
              ("unparseable", "unparseable"), ("judge failed (no answer)", "judge_failed"),
              ("avg response tokens", "avg_response_tokens")]
    out.append("ours (every row once; each in one subset, omnimath apart from math):")
    out += [f"  {label:<46}{m[k]:.4f}" for label, k in lines if k in m]
    for name, g in m.get("official", {}).items():  # second: a group without "PRM" is not scored as critiques
        kind = "step verdicts" if "PRM" in name else ("no 'PRM' in its data_source: the script scores these rows "
                                                      "as outcome verdicts (0/1), not as critiques")
        out.append(f"official script, group {name!r} ({g['count']} rows, {kind}):")
        out += [f"  {label:<46}{g[k]:.4f}" for label, k in _OFFICIAL_LINES if g.get(k) is not None]
    return "\n".join(out)
