"""Data-parallel trial throughput: the same training on N DDP workers vs 1 (Ray Train TorchTrainer).

    python -m benchmarks.ddp_throughput                         # CPU: 1 vs 2 Gloo workers x 1 CPU, toy msglore
    python -m benchmarks.ddp_throughput --device cuda --workers 1,2,4 --preset paper   # GPU: NCCL, 1 GPU each
    ... --write        # also replace this device's section of benchmarks/RESULTS.md

What is timed: exactly what a data-parallel trial's workers run (hpo/execution/trainable.py `ddp_worker`
minus the Tune report: `hpo.training.distributed.DistributedTrainer`, sharded seeded batches, DDP gradient
all-reduce), on a TorchTrainer of N workers with `resources_per_worker` = 1 CPU (or 1 GPU). The
global batch (`data.batch_size`) is the same for every N, as in a search (N workers split it), so
images/s compares like with like. Figure: the median over epochs 2.. of `epoch_seconds` (pure
training; epoch 1 is warm-up), over `--rounds` interleaved rounds (a shared machine slows every
setting alike); throughput = steps x global batch / that; ratio = N workers' images/s over 1
worker's. The worker start-up (about 15 s per trial on the 2-core box) is reported beside it: it is
what each data-parallel trial pays before its first step.

Data: the synthetic scenes (generated once into `.cache/ddp_throughput/`), toy msglore as shipped
(`search_spaces/configs/msglore_toy.yaml`: 128x128 crops, batch 8), or with `--preset paper` the
paper-size msglore (ResNet-50 OS8, 512x512 crops of 512x1024 scenes, batch 8: a GPU setting).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import publish

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Data-parallel trial throughput ({})"


def config(preset: str, device: str, iters: int, epochs: int) -> dict:
    from hpo.config import deep_merge, load_yaml
    from models import preset as model_preset

    cfg = load_yaml(REPO / "search_spaces" / "configs" / "msglore_toy.yaml")
    root = REPO / ".cache" / "ddp_throughput" / preset
    if preset == "paper":
        cfg = deep_merge(cfg, model_preset("msglore", "paper"))
        cfg["model"]["backbone"]["pretrained"] = "none"          # throughput only: no weights needed
        cfg["data"].update(generate={"train": 64, "val": 8, "size": [512, 1024], "seed": 0}, crop=[512, 512])
    cfg["data"]["root"] = str(root)
    cfg["budget"] = {"epochs": epochs, "iters_per_epoch": iters, "val_every": epochs}
    cfg["eval"] = {"tta": False, "overlays": 0}
    cfg["runtime"] = {"device": device, "threads": 1}
    return cfg


def bench_worker(loop: dict) -> None:
    """One rank: train, record the epochs' seconds (rank 0 writes them)."""
    import ray.train

    from hpo.training.distributed import DistributedTrainer

    started = time.time()
    trainer = DistributedTrainer(loop["cfg"], log=lambda *_: None)
    ready = time.time()
    seconds = [trainer.train_epoch()["epoch_seconds"] for _ in range(loop["cfg"]["budget"]["epochs"])]
    if ray.train.get_context().get_world_rank() == 0:
        Path(loop["out"]).write_text(json.dumps({"seconds": seconds, "build_s": ready - started,
                                                 "entered": started}))


def run(cfg: dict, workers: int, use_gpu: bool, storage: Path) -> dict:
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(tempfile.mktemp(suffix=".json"))
    t0 = time.time()
    TorchTrainer(bench_worker, train_loop_config={"cfg": cfg, "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                              resources_per_worker={"GPU": 1} if use_gpu else {"CPU": 1}),
                 run_config=ray.train.RunConfig(name=f"bench-{workers}-{int(t0 * 1000)}",
                                                storage_path=str(storage))).fit()
    res = json.loads(out.read_text())
    out.unlink()
    res["startup_s"] = res["entered"] - t0 + res["build_s"]      # placement, process start, model + data
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ddp_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--workers", default="1,2", help="comma list of worker counts (default 1,2)")
    p.add_argument("--preset", choices=["toy", "paper"], default="toy")
    p.add_argument("--iters", type=int, default=20, help="SGD steps per epoch (default 20)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    import ray

    from datasets.synthetic import ensure

    cfg = config(args.preset, args.device, args.iters, args.epochs)
    ensure(cfg["data"]["root"], **cfg["data"]["generate"])
    counts = [int(n) for n in args.workers.split(",")]
    if 1 not in counts:
        counts.insert(0, 1)
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ctxtune-ddp-bench-") as tmp:
        for r in range(args.rounds):
            for n in counts if r % 2 == 0 else counts[::-1]:
                runs[n].append(run(cfg, n, args.device == "cuda", Path(tmp)))
                print(f"round {r}: {n} worker(s): {['%.2f' % s for s in runs[n][-1]['seconds']]} s/epoch",
                      file=sys.stderr, flush=True)
    ray.shutdown()
    batch = cfg["data"]["batch_size"]
    median = {n: statistics.median(s for res in rs for s in res["seconds"][1:]) for n, rs in runs.items()}
    unit = "GPU" if args.device == "cuda" else "CPU"
    rows = ["| workers | per-epoch training (s, median) | images/s | x 1 worker | worker start-up (s, median) |",
            "|---:|---:|---:|---:|---:|"]
    for n in counts:
        rows.append(f"| {n} x 1 {unit} | {median[n]:.2f} | {args.iters * batch / median[n]:.1f} | "
                    f"{median[1] / median[n]:.2f} | {statistics.median(r['startup_s'] for r in runs[n]):.1f} |")
    command = "python -m benchmarks.ddp_throughput " + " ".join(sys.argv[1:] if argv is None else argv)
    section = "\n".join([
        HEADING.format(args.device), "",
        f"{datetime.date.today()}, {platform.node()} ({os.cpu_count()} cores"
        + (f", {_gpu_name()}" if args.device == "cuda" else "") + f"). Command: `{command.strip()}`, "
        f"{time.perf_counter() - t_all:.0f} s. {args.preset} msglore, crop {cfg['data']['crop']}, global batch "
        f"{batch} split over the workers, {args.iters} steps per epoch, {args.epochs} epochs (the first is "
        f"warm-up), {args.rounds} interleaved rounds. Method: module docstring of `benchmarks/ddp_throughput.py`.",
        "", *rows])
    return publish(HEADING.format(args.device), section, args.write)


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible"


if __name__ == "__main__":
    sys.exit(main())
