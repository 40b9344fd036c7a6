"""The cost ledger: device-seconds a search (or a promotion) spent, and on what.

Researchers report cost in GPU-days, so every result of a trial carries what it cost
(hpo.execution.trainable): `device_seconds` = the wall time since the trial's previous result (training,
validation, checkpointing; the first one includes building the model and data) times the devices
the trial holds — GPUs when it has any (fractions count as such: two trials sharing a GPU each pay
half), else CPU cores; a data-parallel trial pays for all its workers. `device_kind` says which.
This is allocation, not utilisation: an idle GPU a trial holds is paid for, as on a shared cluster.

From those, per search:
- per trial: `device_seconds` per validation and `device_seconds_total` (MLflow run metrics); the
  leaderboard's cost column;
- per rung segment: what all trials spent on the validations between two milestones (up to the
  first ASHA rung, ..., after the last rung up to the full budget);
- the share spent on trials ASHA stopped early (and on failed ones);
- the total as a multiple of one full training (the mean total of the trials that ran the full
  budget), the number a paper's "we tried N configs" should be compared with.
The parent MLflow run gets them as `cost_*` metrics; the report has a "Cost" table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class Ledger:
    device_kind: str                       # "gpu" | "cpu" | "mixed" | "unknown"
    total: float                           # device-seconds of every trial
    segments: list[tuple[str, float]] = field(default_factory=list)   # ("epochs 1-2", seconds), ...
    by_status: dict[str, float] = field(default_factory=dict)         # completed / early_stopped / failed
    full_training: float | None = None     # mean device-seconds of one full-budget trial
    trials: int = 0

    @property
    def full_trainings(self) -> float | None:
        """The total as a multiple of one full training."""
        return self.total / self.full_training if self.full_training else None

    def share(self, status: str) -> float:
        return self.by_status.get(status, 0.0) / self.total if self.total else 0.0

    @property
    def unit(self) -> str:
        return unit_of(self.device_kind)

    def metrics(self, prefix: str = "cost_") -> dict[str, float]:
        """What the parent MLflow run logs."""
        out = {f"{prefix}device_seconds": self.total, f"{prefix}device_hours": self.total / 3600,
               f"{prefix}early_stopped_share": self.share("early_stopped"),
               f"{prefix}failed_share": self.share("failed")}
        if self.full_trainings is not None:
            out[f"{prefix}full_trainings"] = self.full_trainings
        for label, seconds in self.segments:
            out[f"{prefix}device_seconds_{label.replace(' ', '_').replace('-', '_')}"] = seconds
        return out

    def lines(self) -> list[str]:
        """The printed summary."""
        if not self.trials:
            return ["cost: no trial reported its cost"]
        times = f" = {self.full_trainings:.1f}x one full training" if self.full_trainings else ""
        seg = ", ".join(f"{label} {_fmt(s)}" for label, s in self.segments)
        return [f"cost: {_fmt(self.total)} {self.unit}-time over {self.trials} trials{times}; "
                f"{100 * self.share('early_stopped'):.0f}% on early-stopped trials, "
                f"{100 * self.share('failed'):.0f}% on failed ones" + (f"; by rung segment: {seg}" if seg else "")]


def kind_of(kinds) -> str:
    """One device kind for several trials' (None entries ignored): gpu | cpu | mixed | unknown."""
    found = {k for k in kinds if k}
    return found.pop() if len(found) == 1 else ("mixed" if found else "unknown")


def unit_of(kind: str) -> str:
    return {"gpu": "GPU", "cpu": "CPU"}.get(kind, "device")


def _fmt(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def ledger(trials, milestones: list[int]) -> Ledger:
    """The ledger of `trials` (TrialRecords with `cost`); `milestones` = ASHA rungs + the full budget."""
    costed = [t for t in trials if t.cost]
    kind = kind_of(t.device_kind for t in costed)
    total = sum(sum(t.cost.values()) for t in costed)
    by_status: dict[str, float] = {}
    for t in costed:
        by_status[t.status] = by_status.get(t.status, 0.0) + sum(t.cost.values())
    segments, lo = [], 0
    for hi in sorted(set(milestones)):
        seconds = sum(v for t in costed for step, v in t.cost.items() if lo < step <= hi)
        segments.append((f"epochs {lo + 1}-{hi}" if hi > lo + 1 else f"epoch {hi}", seconds))
        lo = hi
    later = sum(v for t in costed for step, v in t.cost.items() if step > lo)
    if later:
        segments.append((f"after epoch {lo}", later))
    full = [sum(t.cost.values()) for t in costed if t.status == "completed"]
    return Ledger(kind, total, segments, by_status, sum(full) / len(full) if full else None, len(costed))


def log_to_run(client, run_id: str, book: Ledger, prefix: str = "cost_") -> None:
    """`cost_*` metrics and the `cost_device_kind` tag on a run (a search's parent run)."""
    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in book.metrics(prefix).items()
                                      if math.isfinite(v)],
                     tags=[RunTag(f"{prefix}device_kind", book.device_kind)])
