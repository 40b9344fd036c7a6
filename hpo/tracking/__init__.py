"""Room `tracking`: the MLflow writers. The store plumbing (URIs, experiments, run queries, the
registry), the one run writer (a trial's, a promotion's, `hpo.train`'s run hold the same things),
the run layouts (search, promotion), the Tune callback that writes from the Ray driver, and the
guarded tracker `hpo.train` writes from inside a training.

Import rule: never imports Optuna, nor the execution, simulation or results rooms.
"""
