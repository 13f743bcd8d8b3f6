"""Tests for the bench scripts that read a run: bench/plot.py (metrics.jsonl -> PNG), bench/flawed.py
(a rollout dump's flawed positives next to their critiques) and bench/realmodel.py's report (from finished
runs: a rerun reuses what OUT holds, so nothing trains); the new scripts' --help, run as users run them.
Synthetic inputs in train.py's formats."""
import json
import math
import os
import struct
import subprocess
import sys

import pytest

from bench import flawed, plot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


# ---- bench/flawed.py ----

def rollout(**kw):
    base = dict(phase="rl", step=7, prompt="What is 2 + 3 * 4?", response="3 * 4 = 12\n\n2 + 12 = 14\n\n\\boxed{14}",
                reward=1.0, correct=True, first_error=-1, critique="All paragraphs are right. \\boxed{-1}", length=20,
                finish_reason="stop", data_source="toy", ground_truth="14")
    return {**base, **kw}


@pytest.fixture
def dump(tmp_path):
    long_critique = " ".join(["Paragraph 1 adds 2 + 12 and writes 15, which is wrong;"] * 4) + " \\boxed{1}"
    rows = [rollout(response="3 * 4 = 12\n\n2 + 12 = 15\n\nso \\boxed{14}", reward=0.0, first_error=1,
                    critique=long_critique),                                                    # flawed positive
            rollout(response="CLEAN-RESPONSE", critique="CLEAN-CRITIQUE"),                     # clean positive
            rollout(response="WRONG-RESPONSE", correct=False, first_error=None, critique=""),   # negative
            rollout(response="UNJUDGED-RESPONSE", first_error=None, critique=""),              # judge failed
            rollout(phase="eval", response="SECOND-FLAWED", first_error=0, critique="SECOND-CRITIQUE")]
    return write_jsonl(tmp_path / "rollouts.jsonl", rows)


def test_flawed_side_by_side(dump, capsys):
    flawed.main([dump, "--width", "120"])
    out = capsys.readouterr().out
    assert "5 rollouts, 4 correct, 2 flawed positives" in " ".join(out.split())  # the header may wrap
    for other in ("CLEAN", "WRONG", "UNJUDGED"):  # only flawed positives are shown
        assert other not in out
    assert "SECOND-FLAWED" in out and "SECOND-CRITIQUE" in out
    lines = out.splitlines()
    assert all(len(line) <= 120 for line in lines)
    # the flagged paragraph is marked, and sits on a line with the critique's first words beside it
    row = next(line for line in lines if ">>[1] 2 + 12 = 15" in line)
    assert " | Paragraph 1 adds 2 + 12" in row
    critique = " ".join(line.split(" | ", 1)[1].strip() for line in lines if " | " in line
                        and line.index(" | ") == row.index(" | ") and "critique" not in line)
    assert "wrong; Paragraph 1 adds" in critique and critique.count("\\boxed{1}") == 1  # wrapped, nothing lost


def test_flawed_narrow_and_n(dump, capsys):
    flawed.main([dump, "--width", "60", "--n", "1"])
    out = capsys.readouterr().out
    assert "showing 1" in out and "SECOND-FLAWED" not in out
    assert " | " not in out  # one column: the response, then the critique
    assert out.index(">>[1] 2 + 12 = 15") < out.index("critique:") < out.index("Paragraph 1 adds")
    assert all(len(line) <= 60 for line in out.splitlines())


# ---- bench/plot.py ----

def rl_metrics(slope):
    rows = [{"eval": "start", "eval_acc@4": 0.25, "eval_flawed_ratio": 0.3, "eval_response_length": 40.0,
             "eval_toy/acc@4": 0.25}]
    for s in range(1, 21):
        rows.append({"step": s, "reward": slope * s - 1, "acc": 0.25 + slope * s, "flawed_ratio": 0.3 - slope * s,
                     "response_length": 40 - s, "entropy": 1.0 / s, "grad_norm": float("nan") if s == 5 else 0.5,
                     "gap_kl": 1e-12, "loss": 0.1})
        if s % 10 == 0:
            rows.append({"eval": f"step{s}", "step": s, "eval_acc@4": 0.25 + slope * s, "eval_acc@16": 0.3,
                         "eval_flawed_ratio": 0.2, "eval_response_length": 35.0})
    return rows


def genrm_metrics():
    rows = [{"eval": "start", "eval_fp_f1": 0.4}]
    rows += [{"step": s, "reward": -1.0 + s / 10, "response_length": 32.0, "entropy": 5.0, "grad_norm": 0.1,
              "verdict_acc": s / 10} for s in range(1, 11)]
    return rows


def test_series_reads_steps_and_evals():
    recs = rl_metrics(0.01)
    acc = plot.series(recs, "eval_acc@", evals=True)
    assert sorted(acc) == ["eval_acc@16", "eval_acc@4"]  # per-source keys (eval_toy/acc@4) are not pooled ones
    assert acc["eval_acc@4"][0] == [0, 10, 20]              # the "start" eval has no step: it is step 0
    assert acc["eval_acc@16"][0] == [10, 20]
    steps, norms = plot.series(recs, "grad_norm")["grad_norm"]
    assert 5 not in steps and len(steps) == 19 and all(math.isfinite(v) for v in norms)  # NaN dropped
    assert plot.series(genrm_metrics(), "acc") == {}  # a genrm run has no accuracy: skipped
    assert plot.smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    assert plot.run_label("out/compare/fapo_s0/rl/metrics.jsonl") == "fapo_s0/rl"


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])  # IHDR width, height


def test_plot_writes_png_for_several_runs(tmp_path):
    pytest.importorskip("matplotlib")
    a = write_jsonl(tmp_path / "fapo" / "rl" / "metrics.jsonl", rl_metrics(0.02))
    b = write_jsonl(tmp_path / "base" / "rl" / "metrics.jsonl", rl_metrics(0.01))
    c = write_jsonl(tmp_path / "critic" / "rl" / "metrics.jsonl", genrm_metrics())
    out = tmp_path / "plot.png"
    r = subprocess.run([sys.executable, "-m", "bench.plot", a, b, c, "-o", str(out), "--smooth", "3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert png_size(out)[0] > 1000  # three panels wide
    drawn = plot.plot([c], str(tmp_path / "genrm.png"), labels=["critic"])
    assert "accuracy" not in drawn and "reward" in drawn and "grad norm" in drawn
    assert png_size(tmp_path / "genrm.png")[0] > 0
    with pytest.raises(ValueError):
        plot.plot([a, b], str(out), labels=["only one"])


def test_plot_without_matplotlib_says_so(tmp_path, monkeypatch):
    a = write_jsonl(tmp_path / "r" / "metrics.jsonl", rl_metrics(0.02))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        plot.main([a, "-o", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


# ---- bench/realmodel.py's report and floors; --help of the new scripts ----

def _write(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _ev(tag, acc, flawed):
    return {"eval": tag, "eval_acc@1": acc, "eval_flawed_ratio": flawed}


def _eval_dump(path, correct, flawed, problems=8, samples=2):
    """An eval dump as train.py --dump-prompts writes it: `correct` of the problems*samples rollouts right (spread
    over the problems), the first `flawed` of those flagged by the checker."""
    rows = []
    for k in range(problems * samples):
        right = k < correct
        rows.append({"prompt": f"problem {k % problems}", "correct": right,
                     "first_error": (1 if k < flawed else -1) if right else None})
    _write(path, rows)


def _finished_runs(out, start, base, fapo):
    """OUT as bench/realmodel.py --quick leaves it: the start's eval and dump, each arm's steps, final eval, dump.
    start/base/fapo: (correct, flawed) of the 16 eval rollouts."""
    n = 16
    _write(os.path.join(out, "start", "sft", "metrics.jsonl"),
           [{"step": 1, "loss": 1.0}, _ev("after_sft", start[0] / n, start[1] / max(start[0], 1))])
    _eval_dump(os.path.join(out, "start", "dumps", "eval_after_sft.jsonl"), *start)
    for name, end in (("baseline", base), ("FAPO", fapo)):
        run = os.path.join(out, f"{name}_seed0")
        steps = [{"step": k, "acc": 0.2, "flawed_ratio": 0.2, "t_sample": 1.0, "t_judge": 0.0, "t_train": 2.0,
                  "response_length": 20.0} for k in (1, 2)]
        _write(os.path.join(run, "rl", "metrics.jsonl"),
               steps + [{**_ev("step2", end[0] / n, end[1] / max(end[0], 1)), "step": 2}])
        _eval_dump(os.path.join(run, "dumps", "eval_step2.jsonl"), *end)


def _report(tmp_path, start, base, fapo):
    out = str(tmp_path / "out")
    _finished_runs(out, start, base, fapo)
    r = subprocess.run([sys.executable, "bench/realmodel.py", "--quick", "--out", out, "--model", "unused"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SFT" not in r.stdout and "rollouts ..." not in r.stdout  # nothing was trained: the runs were reused
    with open(os.path.join(out, "realmodel_quick.json")) as f:
        return r.stdout, {what: ok for what, ok, _ in json.load(f)["floors"]}


def test_realmodel_report_and_floors(tmp_path):
    text, floors = _report(tmp_path, (2, 1), (12, 6), (12, 0))
    assert "| start (after the cold start) | 0.125 [" in text and "| 2 / 16 | 1 |" in text
    assert "| FAPO, seed 0 | 0.750 [" in text and "| 12 / 16 | 0 |" in text
    assert all(floors.values()) and text.count("PASS") == 4
    _, floors = _report(tmp_path, (2, 1), (12, 6), (12, 4))  # the same accuracy; flawed 4/12 against 6/12: not halved
    assert list(floors.values()) == [True, True, False, True]
    _, floors = _report(tmp_path, (2, 1), (3, 1), (12, 0))  # the baseline's rise: 1 of 16, its CI reaches 0
    assert list(floors.values())[:2] == [False, True]


def test_realmodel_floors_never_pass_on_nothing_measured(tmp_path):
    """No correct answer anywhere: 0 <= 0 / 2 and 0 - 0 <= 2 points would pass with nothing measured."""
    text, floors = _report(tmp_path, (0, 0), (0, 0), (0, 0))
    assert not any(floors.values()) and "PASS" not in text


@pytest.mark.parametrize("script", ["bench/realmodel.py", "bench/vs_trl.py", "bench/shared_prompt.py"])
def test_bench_script_help(script):
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
