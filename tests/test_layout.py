"""The project's shape: the import graph of our modules is a DAG with the allowed edges below (data flows one
way: data -> sampler -> fapo / genrm -> grpo -> train), no module's CLI imports a module that imports it, and
the commands the README gives run as scripts with the numbers they promise."""
import ast
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

# every module of ours, and the ones of ours it may import (at the top or inside a function)
ALLOWED = {
    "verifier": set(),
    "data": {"verifier"},
    "critic": {"data", "verifier"},
    "infra.safetensors_io": set(),
    "infra.fsdp": {"infra.safetensors_io"},
    "infra.checkpoint": {"infra.fsdp", "infra.safetensors_io"},
    "infra.fastdecode": set(),
    "infra.genrm_client": set(),
    "infra.runlog": {"infra.checkpoint"},
    "infra.build": {"arith", "data", "genrm", "toy", "infra.fsdp"},
    "sampler": {"infra.fastdecode"},
    "toy": {"data"},
    "arith": {"data"},
    "processbench": {"data"},
    "genrm": {"critic", "data", "processbench", "sampler", "infra.fsdp", "infra.genrm_client", "toy"},
    "fapo": {"genrm", "verifier"},
    "logprobs": {"sampler"},
    "grpo": {"logprobs"},
    "config": {"arith", "grpo", "toy", "sampler"},
    "evaluate": {"fapo", "genrm", "processbench", "infra.runlog"},
    "train": {"config", "critic", "data", "evaluate", "fapo", "genrm", "grpo", "sampler", "infra.build",
              "infra.checkpoint", "infra.fsdp", "infra.runlog"},
}


def module_path(name):
    return os.path.join(ROOT, *name.split(".")) + ".py"


def our_imports(name):
    """(module imported, imported at top level?) for each import of one of our modules in `name`'s file."""
    tree = ast.parse(open(module_path(name)).read())
    top = set(id(n) for n in tree.body)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n in ALLOWED:
                out.add((n, id(node) in top))
    return out


def test_every_module_is_listed():
    found = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    found |= {"infra." + f[:-3] for f in os.listdir(os.path.join(ROOT, "infra")) if f.endswith(".py") and f != "__init__.py"}
    assert found == set(ALLOWED), "add the new module to ALLOWED with the edges it may have"


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_imports_follow_the_allowed_edges(name):
    got = {n for n, _ in our_imports(name)}
    assert got <= ALLOWED[name], f"{name} imports {sorted(got - ALLOWED[name])}, not in its allowed edges"


def test_the_import_graph_is_a_dag():
    graph = {name: {n for n, _ in our_imports(name)} for name in ALLOWED}
    state = {}

    def visit(n, path):
        if state.get(n) == "done":
            return
        assert state.get(n) != "open", f"import cycle: {' -> '.join(path + [n])}"
        state[n] = "open"
        for m in graph[n]:
            visit(m, path + [n])
        state[n] = "done"
    for n in graph:
        visit(n, [])


def test_no_cli_imports_a_module_that_imports_it():
    """Run as a script, a module is loaded twice when its CLI imports a module that imports it back: two
    copies of every class (isinstance fails across them). Every import chain from a module must stay clear of it."""
    graph = {name: {n for n, _ in our_imports(name)} for name in ALLOWED}

    def reaches(a, b, seen=()):
        return any(m == b or (m not in seen and reaches(m, b, seen + (m,))) for m in graph[a])
    for name in ALLOWED:
        assert not reaches(name, name), f"{name} reaches itself through its imports"


def run_script(args, timeout=300):
    r = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_genrm_cli_as_a_script_scores_the_oracle_perfectly():
    """`python genrm.py --model oracle --data toy`, run as a user runs it (the docstring promises 1.0)."""
    out = run_script(["genrm.py", "--model", "oracle", "--data", "toy", "--limit", "20"])
    m = json.loads(out.strip().splitlines()[-1])
    assert m["pb_f1"] == 1.0 and m["fp_f1"] == 1.0 and m["unparseable"] == 0.0


def test_genrm_cli_as_a_script_against_the_served_checker():
    """The README's served-GenRM evaluation, against the test server answering with the toy checker."""
    from bench.genrm_server import GenRMServer
    with GenRMServer() as server:
        out = run_script(["genrm.py", "--model", server.url, "--genrm-model", "toy", "--data", "toy", "--limit", "20",
                          "--max-new-tokens", "96"])
    m = json.loads(out.strip().splitlines()[-1])
    assert m["pb_f1"] == 1.0 and m["judge_failed"] == 0.0
