"""ctxtune's hyperparameter search: the public API, imported lazily so `import hpo` stays cheap.

    import hpo

    spec = hpo.load_space("search_spaces/demo.yaml", overrides={"experiment.name": "demo-2"})
    hpo.run_search(spec, space_path="search_spaces/demo.yaml")     # 0, or 130 when interrupted
    search = hpo.find_search("demo-2")                              # .spec, .trials, .leaderboard(), ...
    hpo.write_report(search, out="report-demo-2")
    hpo.promote_search(search, top_k=2, seeds=2, out="winners")
    source = hpo.from_search(search)                                 # or hpo.from_table("curves.npz")
    settings = hpo.ReplaySettings.from_space(search.spec, sampler="random", num_samples=len(source.params))
    print(hpo.replay_summary(source, settings, hpo.simulate(source, settings)))

`hpo.promote` and `hpo.replay` are the commands' modules (`python -m hpo.promote`), so the functions
behind them are exported as `promote_search` and `simulate` (+ `replay_summary`). The rooms (README
"Layout"): training/ (plain PyTorch), tuning/ (what decides), tracking/ (MLflow writers), results/
(a finished search, Ray-free), simulation/ (the replay), execution/ (the Ray side); at the root the
run-config schema (config.py), the trial vocabulary (trials.py) and the commands.
"""

from __future__ import annotations

import importlib

_API = {
    "load_space": ("hpo.tuning.space", "load_space"),
    "run_search": ("hpo.execution.runner", "run_search"),
    "find_search": ("hpo.results.handle", "find_search"),
    "write_report": ("hpo.results.report_page", "write_report"),
    "promote_search": ("hpo.execution.promotion", "promote"),
    "from_table": ("hpo.simulation.curves", "from_table"),
    "from_search": ("hpo.simulation.curves", "from_search"),
    "ReplaySettings": ("hpo.simulation.simulator", "ReplaySettings"),
    "simulate": ("hpo.simulation.simulator", "replay"),
    "replay_summary": ("hpo.simulation.simulator", "summary"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'hpo' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value          # import once
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
