"""hpo/ in rooms: each room's import rule (hpo/*/__init__.py says it), checked on every import
statement (module level and inside functions) and, for the rooms that promise a light import, in a
fresh interpreter; and no import circle between hpo's modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

HPO = Path(__file__).resolve().parents[1] / "hpo"
COMMANDS = {"search", "promote", "report", "replay", "train", "evaluate"}
ROOMS = ("training", "tuning", "tracking", "results", "simulation", "execution")
# room -> the hpo rooms it may import (itself included); the root's config.py and trials.py are rooms too
MAY_IMPORT = {
    "config": {"config"},
    "trials": {"trials"},
    "training": {"config", "trials", "training"},
    "tuning": {"config", "trials", "training", "tuning"},
    "tracking": {"config", "trials", "training", "tuning", "tracking"},
    "results": {"config", "trials", "training", "tuning", "tracking", "results"},
    "simulation": {"config", "trials", "training", "tuning", "simulation"},
    "execution": {"config", "trials", "training", "tuning", "tracking", "results", "simulation", "execution"},
}
NEVER = {    # room -> third-party packages it never imports
    "config": {"ray", "optuna", "mlflow"},
    "trials": {"ray", "optuna", "mlflow", "torch", "numpy"},
    "training": {"ray", "optuna", "mlflow"},
    "tuning": {"mlflow"},
    "tracking": {"optuna"},
    "results": {"ray"},
    "simulation": {"mlflow"},
}
# tuning and simulation use Ray only through Tune's searcher / scheduler / stopper / callback interfaces
RAY_INTERFACES = {"ray.tune.schedulers", "ray.tune.search", "ray.tune.experiment"}
RAY_TUNE_NAMES = {"Callback", "Stopper"}


def module_name(path: Path) -> str:
    parts = path.relative_to(HPO.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    if parts[1] in ROOMS:
        return parts[1]
    return "commands" if parts[1] in COMMANDS else parts[1]


def imports(path: Path, top_level_only: bool = False):
    """(imported module, imported names, line) of every import statement in `path`."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [a.name for a in node.names], node.lineno


def hpo_module(module: str, names: list[str], known: set[str]) -> list[str]:
    """The hpo modules an import statement loads (`from hpo.x import y` may name a submodule y)."""
    if module != "hpo" and not module.startswith("hpo."):
        return []
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
    return subs or [module]


MODULES = {module_name(p): p for p in sorted(HPO.rglob("*.py"))}


def violations(modules: dict[str, Path]) -> list[str]:
    found = []
    for mod, path in modules.items():
        room = room_of(mod)
        if room in ("commands", "api"):
            continue
        for target, names, line in imports(path):
            where = f"hpo/{path.relative_to(path.parents[len(mod.split('.')) - 2])}:{line} imports {target}"
            for sub in hpo_module(target, names, set(modules)):
                if room_of(sub) not in MAY_IMPORT[room]:
                    found.append(f"{where} (room {room} may import {sorted(MAY_IMPORT[room])})")
            top = target.split(".")[0]
            if top in NEVER.get(room, ()):
                found.append(f"{where} (room {room} never imports {top})")
            if room in ("tuning", "simulation") and top == "ray":
                if not (target in RAY_INTERFACES or (target == "ray.tune" and set(names) <= RAY_TUNE_NAMES)):
                    found.append(f"{where} (room {room} uses Ray only through Tune's interfaces)")
    return found


def test_every_module_is_in_a_room_or_a_command():
    rooms = {room_of(m) for m in MODULES}
    assert rooms == {"api", "commands", "config", "trials", *ROOMS}, rooms
    assert {m.split(".")[1] for m in MODULES if room_of(m) == "commands"} == COMMANDS


def test_each_room_keeps_its_import_rule():
    assert violations(MODULES) == []


def test_the_rule_check_sees_a_violation(tmp_path):
    """The check itself can fail: a training module that imports Ray and the execution room, a
    tuning module that drives Ray itself."""
    (tmp_path / "training").mkdir()
    (tmp_path / "tuning").mkdir()
    leak, driver = tmp_path / "training" / "leak.py", tmp_path / "tuning" / "driver.py"
    leak.write_text("import ray\nfrom hpo.execution.runner import run_search\n")
    driver.write_text("def f():\n    from ray import tune\n    from ray.tune.search import Searcher\n")
    found = violations({**MODULES, "hpo.training.leak": leak, "hpo.tuning.driver": driver})
    assert found == ["hpo/training/leak.py:1 imports ray (room training never imports ray)",
                     "hpo/training/leak.py:2 imports hpo.execution.runner (room training may import "
                     "['config', 'training', 'trials'])",
                     "hpo/tuning/driver.py:2 imports ray (room tuning uses Ray only through Tune's interfaces)"], found


def test_no_import_circle_between_modules():
    """Module-level imports between hpo's modules form no cycle (lazy imports inside functions may)."""
    graph = {m: {t for target, names, _ in imports(p, top_level_only=True)
                 for t in hpo_module(target, names, set(MODULES)) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(n):] + [m, n]))
            if n not in state:
                visit(n, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("room, absent", [
    ("training", ("ray", "optuna", "mlflow")),
    ("results", ("ray",)),
])
def test_a_rooms_modules_load_without_what_it_never_imports(room, absent):
    """In a fresh interpreter, importing every module of the room (and what they import in turn)
    loads none of the packages the room promises to stay away from."""
    mods = [m for m in MODULES if room_of(m) == room]
    code = ("import importlib, json, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            f"print(json.dumps([p for p in {list(absent)!r} if p in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HPO.parent, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_import_hpo_is_cheap_and_exports_the_api():
    code = ("import sys, hpo\n"
            "heavy = [p for p in ('ray', 'optuna', 'mlflow', 'torch') if p in sys.modules]\n"
            "from hpo.tuning.space import load_space\n"
            "from hpo.execution.promotion import promote\n"
            "ok = hpo.load_space is load_space and hpo.promote_search is promote\n"
            "ok = ok and all(callable(getattr(hpo, name)) for name in hpo.__all__)\n"
            "print(heavy, ok, set(hpo.__all__) <= set(dir(hpo)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HPO.parent, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "True", "True"], out.stdout
