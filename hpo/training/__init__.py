"""Room `training`: plain PyTorch. The trainer (one training loop, its validation pass and
checkpoints), its data-parallel rank, LR schedules, what a finished training leaves (outputs), a
resumable training in a folder (`hpo.train`'s library), checkpoint evaluation (`hpo.evaluate`'s),
the checks before a training starts, atomic file writes. Runs on workers and in plain processes.

Import rule: never imports Ray, Optuna or MLflow; from hpo only `hpo.config`, `hpo.trials` and this room.
"""
