"""Data-parallel trials: a 2-worker Gloo DDP training (Ray Train V2 TorchTrainer) inside a real Tune search."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import tiny_run_config, wait_for
from datasets.bundle import SeededSampler, ShardedSeededSampler
from hpo.results.handle import find_search
from hpo.trials import ray_results
from hpo.execution.runner import run_search, trial_plan
from hpo.tuning.space import SpaceError, load_space

EPOCHS = 2


def test_ranks_split_every_global_batch_of_the_single_process_stream():
    single = list(SeededSampler(26, torch.Generator().manual_seed(3)))
    ranks = [list(ShardedSeededSampler(26, torch.Generator().manual_seed(3), True, r, 2, global_batch=4))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 12                   # 6 global batches of 4 (26 % 4 dropped)
    for b in range(6):
        step = ranks[0][2 * b:2 * b + 2] + ranks[1][2 * b:2 * b + 2]
        assert step == single[4 * b:4 * b + 4]                    # the ranks' step-b batches = step b
    assert not {i for i, _ in ranks[0]} & {i for i, _ in ranks[1]}  # different images on each rank
    with pytest.raises(ValueError, match="not divisible by the 3 data-parallel workers"):
        ShardedSeededSampler(26, None, True, 0, 3, global_batch=4)


def space_file(tmp_path: Path, data_root: Path, resources: dict) -> Path:
    base = tiny_run_config(data_root)
    base["budget"] = {"epochs": EPOCHS, "iters_per_epoch": 3, "val_every": 1}
    space = {"experiment": {"name": "ddp", "storage_path": str(tmp_path / "ray_results"),
                            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
             "base": base,
             "space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.02, "log": True}},
             "search": {"sampler": "random", "seed": 0, "num_samples": 1, "max_concurrent": 2},
             "scheduler": {"name": "asha", "max_t": EPOCHS, "grace_period": 1, "reduction_factor": 2,
                           "trust": "raw"},
             "resources": resources}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.mark.slow
def test_two_worker_ddp_trial_in_a_real_search(ray_local, tiny_data, tmp_path, monkeypatch):
    from hpo.training.trainer import Trainer, load_checkpoint

    monkeypatch.chdir(tmp_path)
    path = space_file(tmp_path, tiny_data, {"cpu": 1, "gpu": 0, "workers": 2})
    spec = load_space(path)
    # 2 CPUs hold one 2-worker trial at a time; the trial's own Tune actor holds no CPU
    plan = trial_plan({"cpu": 1, "gpu": 0, "workers": 2, "sync_bn": False}, spec.base, tmp_path)
    assert plan.max_concurrent == 1 and plan.reuse_actors is False
    with pytest.raises(SpaceError, match="a trial needs 4 CPUs"):
        trial_plan({"cpu": 2, "gpu": 0, "workers": 2, "sync_bn": False}, spec.base, tmp_path)
    assert run_search(spec, space_path=str(path), report=False) == 0

    search = find_search("ddp", str(tmp_path / "ray_results"))
    (trial,) = search.trials
    assert trial.status == "completed" and sorted(trial.curve) == [1, 2]
    rows = ray_results(search.exp_dir)[trial.trial_id]
    assert [r["training_iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert r["ddp_world_size"] == 2
        assert len(set(r["ddp_worker_pids"])) == 2 and r["pid"] not in r["ddp_worker_pids"]   # two trainers
        assert r["ddp_weights_in_sync"] is True        # gradients all-reduced: both ranks hold the same weights
    # The reported mIoU (each rank a val shard, confusion matrices summed) is the whole split's
    # mIoU of the weights rank 0 checkpointed, scored by the single-process engine.
    ckpt = Path(rows[-1]["checkpoint_path"])
    assert ckpt.is_relative_to(search.exp_dir)
    state = load_checkpoint(ckpt / "state.pt")
    assert not any(k.startswith("module.") for k in state["model"]) and len(state["rank_rng"]) == 2
    single = Trainer(search.trial_config(trial), log=lambda *_: None)
    single.model.load_state_dict(state["model"])
    assert single.validate(tta=False).metrics["val_miou"] == pytest.approx(trial.curve[2], abs=1e-6)

    # One MLflow run for the trial: full history, overlays, and the cost of both workers
    client = MlflowClient(search.tracking_uri)
    (run,) = client.search_runs([search.experiment_id], f"tags.mlflow.parentRunId = '{search.parent_run_id}'")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")] == [1, 2]
    assert "overlays" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.data.tags["device_kind"] == "cpu"
    # the ledger's own accounting (not a ratio of two clocks): both workers' CPU held for every
    # interval, the intervals summing to the total that MLflow and the last result carry
    assert [r["devices_held"] for r in rows] == [2.0, 2.0]
    charged = [m.value for m in client.get_metric_history(run.info.run_id, "device_seconds")]
    per_result = [r["device_seconds"] for r in rows]
    assert charged == pytest.approx(per_result)
    assert min(charged) > 0                          # every interval was charged
    assert run.data.metrics["device_seconds_total"] == pytest.approx(sum(charged))
    assert rows[-1]["device_seconds_total"] == pytest.approx(sum(charged))

    # the workers' placement group was freed: the CPUs are there for the next search
    wait_for(lambda: ray_local.available_resources().get("CPU", 0) == 2, 20, "the DDP workers' CPUs to be freed")


def test_bad_data_parallel_resources_are_one_line(tiny_data, tmp_path):
    for resources, expected in [
        ({"cpu": 1, "gpu": 0.5, "workers": 2}, "resources: gpu: a data-parallel worker needs whole GPUs"),
        ({"cpu": 1, "workers": 2, "sync_bn": True}, "resources: sync_bn: needs workers > 1 on GPUs"),
        ({"cpu": 1, "workers": 3}, "base.data.batch_size: expected a multiple of resources.workers (3)"),
    ]:
        with pytest.raises(SpaceError) as err:
            load_space(space_file(tmp_path, tiny_data, resources))
        assert str(err.value).startswith(expected), err.value
