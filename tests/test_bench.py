"""bench/realmodel.py's report, from finished runs (no training: a rerun reuses what OUT holds), and the bench
scripts' --help, run as users run them (subprocesses)."""
import sys, os; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E401,E702
import json
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _ev(tag, acc, flawed, length=90.0):
    return {"eval": tag, "eval_acc@1": acc, "eval_flawed_ratio": flawed, "eval_response_length": length}


def _finished_runs(out, start, base, fapo):
    """OUT as bench/realmodel.py --quick leaves it: the start's eval, each arm's steps and final eval."""
    _write(os.path.join(out, "start", "sft", "metrics.jsonl"), [{"step": 1, "loss": 1.0}, _ev("after_sft", *start)])
    for name, end in (("baseline", base), ("FAPO", fapo)):
        steps = [{"step": k, "acc": 0.2, "flawed_ratio": 0.2} for k in (1, 2)]
        _write(os.path.join(out, f"{name}_seed0", "rl", "metrics.jsonl"), steps + [{**_ev("step2", *end), "step": 2}])


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
    text, floors = _report(tmp_path, (0.20, 0.25), (0.30, 0.24), (0.31, 0.10))
    assert "| start (after the cold start) | 0.200 | 0.250 | 90.0 |" in text
    assert "| FAPO, seed 0 | 0.310 | 0.100 | 90.0 | 5 / 16 |" in text
    assert all(floors.values()) and text.count("PASS") == 3
    _, floors = _report(tmp_path, (0.20, 0.25), (0.30, 0.24), (0.25, 0.13))  # 5 points apart, not quite halved
    assert list(floors.values()) == [True, False, False]


def test_realmodel_floors_never_pass_on_nothing_measured(tmp_path):
    """No correct answer anywhere: 0 <= 0 / 2 and 0 - 0 <= 2 points would pass with nothing measured."""
    text, floors = _report(tmp_path, (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))
    assert not any(floors.values()) and "PASS" not in text


@pytest.mark.parametrize("script", ["bench/realmodel.py", "bench/vs_trl.py"])
def test_bench_script_help(script):
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
