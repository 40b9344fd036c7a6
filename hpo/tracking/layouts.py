"""Where a Tune trial's MLflow run lives, what it is called and how it is found again: run layouts.

The MLflow callback (hpo.tracking.trial_logger) asks its layout for a trial's run name and tags, and
for the filter and key tag that find the run again (a retried call, a resumed search). `SearchRuns`
nests one run per search trial under the search's parent run; `PromotedRuns` makes top-level runs in
the search's experiment for promoted trainings. Room `hpo.tracking`: never imports Optuna or PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpo.tracking.store import nested_filter


@dataclass(frozen=True)
class SearchRuns:
    """Run layout of a search: one run per trial, nested under the search's parent run."""
    parent_run_id: str
    key_tag: str = "ray_trial_id"

    def filter(self) -> str:
        return nested_filter(self.parent_run_id)

    def name(self, trial_id: str, labels: dict) -> str:
        return f"trial-{trial_id}"

    def tags(self, trial_id: str, labels: dict) -> dict[str, str]:
        return {"mlflow.parentRunId": self.parent_run_id, self.key_tag: trial_id}



@dataclass(frozen=True)
class PromotedRuns:
    """Run layout of a promotion: top-level runs in the search's experiment, tagged
    with the search's parent run, the rank and seed, and the search trial they re-train."""
    parent_run_id: str
    search_name: str
    winner_tags: dict = field(default_factory=dict)   # rank -> tags naming the promoted search trial
    key_tag: str = "ctxtune.promote_trial"

    def filter(self) -> str:
        return f"tags.`ctxtune.search_parent` = '{self.parent_run_id}' and tags.`ctxtune.promote` = '1'"

    def name(self, trial_id: str, labels: dict) -> str:
        return f"promote-rank{labels['rank']}-seed{labels['seed']}"

    def tags(self, trial_id: str, labels: dict) -> dict[str, str]:
        return {"ctxtune.search_parent": self.parent_run_id, "ctxtune.search_name": self.search_name,
                "ctxtune.promote": "1", self.key_tag: trial_id, "rank": str(labels["rank"]),
                "seed": str(labels["seed"]), **self.winner_tags[labels["rank"]]}
