"""The trial vocabulary every room shares: how a trial ended, the keys of its results, the files a
search and its trials leave on disk, and how those files are read back.

One small module so that the searcher, the stop rules, the MLflow writer, the leaderboards and the
replay read a trial the same way. It imports nothing but the standard library (no Ray, Optuna,
MLflow or PyTorch): any room may import it.
"""

from __future__ import annotations

import json
from pathlib import Path

# --- how a trial ended ------------------------------------------------------------------------
STATUSES = ("completed", "early_stopped", "failed", "unfinished")
DIVERGED = "diverged"      # the `status` a trainable reports when the loss became NaN/inf

# --- keys of a trial's results ----------------------------------------------------------------
ITERATION = "training_iteration"     # Ray's count of results = validations so far (the rung unit)
STATUS = "status"                    # DIVERGED on the result of a diverged loss
ERROR = "error"                      # that result's one-line reason
LABEL_PREFIX = "ctxtune."            # params under this prefix are labels (promotion's rank/seed), not knobs

# --- files ------------------------------------------------------------------------------------
STATE_FILE = "ctxtune_search.json"          # beside Ray's results: parent run id, tracking URI, experiment, space
JOURNAL_FILE = "optuna_journal.log"         # the Optuna study
STOP_FILE = "ctxtune_stop.json"             # why a stop rule ended the search
CALIBRATION_FILE = "calibrated_stopping.json"   # the calibrated scheduler's state (resume, report)
CHECKPOINT_FILE = "state.pt"                # in a trial's checkpoint: the trainer's state
LEDGER_FILE = "ledger.json"                 # in a trial's checkpoint: device-seconds spent so far
TRAIN_RUN = "train"                         # a data-parallel trial's Ray Train run, inside the trial's folder
# what a finished training leaves in its checkpoint or output folder (hpo.training.outputs), logged to its run
MODEL_DIR = "model"                         # weights.pt + config.yaml: what the model registry points at
OVERLAYS = "overlays"                       # colour overlays of validation predictions
CONFUSION = "confusion.png"                 # the final evaluation's confusion matrix


def trial_status(last_result: dict | None, errored: bool, max_t: int) -> str:
    """The one reading of how a trial ended, from its last result: shared by the searcher, the MLflow
    tags, the leaderboards and every reader of recorded results."""
    if errored or not last_result or last_result.get(STATUS) == DIVERGED:
        return "failed"
    if last_result.get(ITERATION, 0) < max_t:
        return "early_stopped"
    return "completed"


def trial_error_line(trial) -> str:
    """The last line of a failed Tune trial's error (the exception's type and message)."""
    try:
        err = trial.get_error()
        text = str(err) if err else ""
    except Exception:  # noqa: BLE001
        text = ""
    if not text and trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text()
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "trial errored"


def split_params(params: dict) -> tuple[dict, dict]:
    """(config overrides, labels) of a trial's params; labels lose their `ctxtune.` prefix."""
    overrides = {k: v for k, v in params.items() if not k.startswith(LABEL_PREFIX)}
    labels = {k[len(LABEL_PREFIX):]: v for k, v in params.items() if k.startswith(LABEL_PREFIX)}
    return overrides, labels


def result_rows(result_json: Path) -> list[dict]:
    """The result rows of one trial's result.json, in order (a restarted trial's re-runs included)."""
    rows = []
    if result_json.is_file():
        for line in result_json.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue       # a line cut short by an interrupted write
            if isinstance(row, dict):
                rows.append(row)
    return rows


def ray_results(exp_dir: Path) -> dict[str, list[dict]]:
    """Trial id -> every result row Ray wrote for it."""
    out: dict[str, list[dict]] = {}
    for path in sorted(Path(exp_dir).glob("*/result.json")):
        for row in result_rows(path):
            if "trial_id" in row:
                out.setdefault(row["trial_id"], []).append(row)
    return out
