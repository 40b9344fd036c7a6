"""The Ray Tune function trainables: one trial = one resolved run config trained by the engine.

Used by both the search and the promotion (hpo.execution.promotion), so a promoted training is the same
code path as the trial it re-trains. `run_trial` trains in the trial's own process
(`resources.workers: 1`); `run_ddp_trial` makes the trial the driver of a Ray Train V2
`TorchTrainer` whose workers train data-parallel (`hpo.training.distributed`), the pattern Ray documents
for Train V2 inside Tune. Both report the same results after every validation:

- A trial's config is a flat dict of dotted overrides (`model.selection.n3`) applied to the base
  config. Keys under `ctxtune.` are labels, not config (a promotion's `ctxtune.rank`): the
  trainable drops them, the MLflow callback turns them into tags (`split_params`).
- After each validation the trial reports its metrics with a checkpoint (engine state + a few
  prediction-overlay PNGs, which the driver logs to MLflow). A restarted trial continues from its
  last checkpoint.
- `final_outputs=True` (promotion): the last report also carries the final evaluation
  (`final_val_miou`, with TTA when `eval.tta`; per-class IoU from it) and its checkpoint holds the
  weights, the confusion picture and the final overlays (hpo.training.outputs).
- A diverged loss ends the trial at once with one result `{"status": "diverged", "error": ...}`
  and no metrics, not an exception: retrying a deterministic NaN would only burn the budget again,
  and a result without metrics is not mistaken for a validation by anyone who reads results (the
  search turns off Tune's check that every result carries the metric; hpo.execution.runner).
- A data-parallel trial's checkpoints are its Train run's (`<trial folder>/train/`, rank 0 writes
  them; Tune gets their path as `checkpoint_path`); a restarted trial's Train run resumes from
  them. Its results also carry `ddp_world_size`, `ddp_worker_pids` and `ddp_weights_in_sync` (every
  rank's parameters alike: the gradients were all-reduced).
- Every result also names where it ran — `node_id` (Ray node) and `pid` (the worker process) —
  so the driver can tag the MLflow run with it and a fault test can find the process to kill.
- And what it cost (hpo.results.ledger): `device_seconds`, the wall time since the previous result
  times the devices the trial holds (`devices`, `device_kind`: GPUs when it has any, else CPU
  cores), and `device_seconds_total` so far (kept in the checkpoint, so a restarted trial goes on
  counting; the partial epoch a crash loses is not counted).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune import Callback

from hpo.config import apply_overrides
from hpo.training.trainer import DivergenceError, Trainer, save_checkpoint
from hpo.training.outputs import OVERLAYS, final_evaluation, write_final_outputs, write_overlays
from hpo.trials import CHECKPOINT_FILE, DIVERGED, ITERATION, LEDGER_FILE, TRAIN_RUN, split_params

class Meter:
    """Device-seconds: wall time between results times the devices the trial holds. `start` (a
    time.time()) is when the devices were taken: a data-parallel trial's driver passes the moment it
    asked for the workers, so their start-up is paid for too."""

    def __init__(self, devices: float, kind: str, spent: float = 0.0, start: float | None = None):
        self.devices, self.kind, self.spent = devices, kind, spent
        self.last = time.time() if start is None else start

    def charge(self) -> dict:
        now = time.time()
        cost, self.last = (now - self.last) * self.devices, now
        self.spent += cost
        return {"device_seconds": cost, "device_seconds_total": self.spent, "device_kind": self.kind,
                "devices_held": self.devices}


def restore(trainer: Trainer, meter: Meter, checkpoint) -> None:
    """Continue from a checkpoint folder: engine state and the cost spent so far."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as ckpt_dir:
        trainer.load(Path(ckpt_dir) / CHECKPOINT_FILE)
        if (Path(ckpt_dir) / LEDGER_FILE).is_file():
            meter.spent = json.loads((Path(ckpt_dir) / LEDGER_FILE).read_text())["device_seconds_total"]


def validation_report(trainer: Trainer, metrics: dict, val, final_outputs: bool, meter: Meter, out: Path | None,
                      **extra) -> dict:
    """The result of one validation, and the checkpoint folder `out` (None: a rank that writes none).

    Collective in a data-parallel run (the final evaluation and `state_dict` gather over the ranks):
    every rank calls it."""
    report = {**metrics, **extra}
    if final_outputs and trainer.epoch == trainer.cfg["budget"]["epochs"]:
        val = final_evaluation(trainer, val)
        report.update({f"final_{k}": v for k, v in val.metrics.items()})
        final = True
    else:
        final = False
    report.update({f"iou/{name}": v for name, v in val.per_class_iou.items()})
    state = trainer.state_dict()
    report.update(meter.charge())
    if out is not None:
        save_checkpoint(state, out / CHECKPOINT_FILE)
        if final:
            write_final_outputs(trainer, trainer.cfg, val, out)
        else:
            write_overlays(val.samples, trainer.data.palette, out / OVERLAYS)
        (out / LEDGER_FILE).write_text(json.dumps({"device_seconds_total": meter.spent}))
    return report


def run_trial(params: dict, base: dict, final_outputs: bool = False, devices: float = 1.0,
              device_kind: str = "cpu") -> None:
    """A single-process trial (`resources.workers: 1`)."""
    meter = Meter(devices, device_kind)
    trainer = Trainer(apply_overrides(base, split_params(params)[0]), log=lambda *_: None)
    restore(trainer, meter, tune.get_checkpoint())
    where = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def on_validation(trainer: Trainer, metrics: dict, val) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            report = validation_report(trainer, metrics, val, final_outputs, meter, Path(tmp), **where)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        trainer.fit(on_validation)
    except DivergenceError as err:
        tune.report({"status": DIVERGED, "error": str(err), **where, **meter.charge()})


# --- data-parallel trials: one Tune trial = one Ray Train TorchTrainer run ---------------------------

def run_ddp_trial(params: dict, base: dict, experiment_dir: str, workers: int, worker_resources: dict,
                  use_gpu: bool = False, sync_bn: bool = False, final_outputs: bool = False,
                  devices: float = 1.0, device_kind: str = "cpu") -> None:
    """The Tune trial of a data-parallel training (`resources.workers` > 1): it only drives a Ray
    Train `TorchTrainer` whose `workers` processes train (`ddp_worker`); their rank 0's results reach
    Tune through Ray's `TuneReportCallback` (the pattern Ray documents for Train V2 inside Tune)."""
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    # The Train run lives in the trial's folder *in storage*: the same path on every restart of the
    # trial (and after Tuner.restore), so Train finds its own last checkpoint again.
    # `tune.get_context().get_trial_dir()` is the session's working copy, not that.
    trial_dir = str(Path(experiment_dir) / Path(tune.get_context().get_trial_dir()).name)
    TorchTrainer(
        ddp_worker,
        train_loop_config={"cfg": apply_overrides(base, split_params(params)[0]), "sync_bn": sync_bn,
                           "final_outputs": final_outputs, "devices": devices, "device_kind": device_kind,
                           "trial_dir": trial_dir, "started": time.time()},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=worker_resources),
        run_config=ray.train.RunConfig(name=TRAIN_RUN, storage_path=trial_dir, callbacks=[TuneReportCallback()],
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
    ).fit()


def ddp_worker(loop: dict) -> None:
    """One rank of a data-parallel trial, inside Ray Train (which set up torch.distributed)."""
    import ray.train

    from hpo.training.distributed import DistributedTrainer, weights_fingerprint

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if rank == 0:
        PlacementGroupReaper.record(loop["trial_dir"])
    meter = Meter(loop["devices"], loop["device_kind"], start=loop["started"])
    trainer = DistributedTrainer(loop["cfg"], log=lambda *_: None, sync_bn=loop["sync_bn"])
    restore(trainer, meter, ray.train.get_checkpoint())
    budget = trainer.cfg["budget"]
    where = {"node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid()}

    def validations(epoch: int) -> int:
        return sum(1 for e in range(1, epoch + 1) if e % budget["val_every"] == 0 or e == budget["epochs"])

    def on_validation(trainer, metrics: dict, val) -> None:
        ranks = trainer.gather({"pid": os.getpid(), "weights": weights_fingerprint(trainer.model)})
        extra = {**where, "ddp_world_size": trainer.world, "ddp_worker_pids": [r["pid"] for r in ranks],
                 "ddp_weights_in_sync": len({r["weights"] for r in ranks}) == 1,
                 # Tune keeps a reported training_iteration: a restarted run keeps counting validations
                 ITERATION: validations(trainer.epoch)}
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) if rank == 0 else None
            report = validation_report(trainer, metrics, val, loop["final_outputs"], meter, out, **extra)
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp) if out else None)

    try:
        trainer.fit(on_validation)
    except DivergenceError as err:        # every rank at the same step: the loss is averaged first
        ray.train.report({"status": DIVERGED, "error": str(err), **where, **meter.charge(),
                          ITERATION: validations(trainer.epoch) + 1})


class PlacementGroupReaper(Callback):
    """Frees a finished data-parallel trial's Train worker placement group if it outlived the trial.

    Tune ends a trial (an ASHA stop, also the stop ASHA sends at max_t, which usually beats Train's
    own shutdown) by killing the trial's actor; the Train controller and workers die with it, but
    their placement group belongs to the job. Ray Train's cleaner frees it only when the State API
    can tell the controller is dead, and without the dashboard (`hpo.search` starts Ray without it)
    that query fails: the group keeps its CPUs/GPUs and the next trial's workers wait for them
    forever (Ray 2.60). Rank 0 records its placement group in the trial folder; this driver-side
    Tune callback removes it a few seconds after the trial ends (public `ray.util` API only).
    """

    FILE = "train_placement_group.pkl"

    def __init__(self, grace_s: float = 3.0):
        self.grace_s = grace_s

    @classmethod
    def record(cls, trial_dir: str) -> None:
        import pickle

        pg = ray.util.get_current_placement_group()
        if pg is not None:
            Path(trial_dir).mkdir(parents=True, exist_ok=True)
            (Path(trial_dir) / cls.FILE).write_bytes(pickle.dumps(pg))

    def _later(self, trial) -> None:
        import threading

        timer = threading.Timer(self.grace_s, self.reap, args=(Path(trial.path) / self.FILE,))
        timer.daemon = True
        timer.start()

    @classmethod
    def reap(cls, path: Path) -> None:
        import pickle

        try:
            if path.is_file():
                pg = pickle.loads(path.read_bytes())
                if ray.util.placement_group_table(pg).get("state") in ("PENDING", "CREATED", "RESCHEDULING"):
                    ray.util.remove_placement_group(pg)
        except Exception:  # noqa: BLE001 - Ray shut down meanwhile, or the group is gone: nothing to free
            pass

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._later(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._later(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._later(trial)

    def on_experiment_end(self, trials, **info):
        for trial in trials:           # the last trials' timers may not have fired yet
            self.reap(Path(trial.path) / self.FILE)
