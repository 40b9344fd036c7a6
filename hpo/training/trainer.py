"""The one training loop shared by search trials, `hpo.train` and promotion.

`Trainer(cfg)` builds data, model, SGD (momentum, weight decay) and a poly LR schedule from a run
config, then `fit(on_validation=...)` trains epoch by epoch and calls back after every validation
with the metrics; the caller decides what to do with them (Ray Tune report, MLflow, printing) and
when to checkpoint. The engine itself knows nothing of Ray or MLflow.

Choices:
- One learning rate for all parameters (the papers give a single initial LR); by default poly decay
  per iteration over the whole budget, power `optim.poly_power` (0.9). `optim.schedule` picks a
  budget-aware alternative (hpo.training.schedules: `wsd`, `rung_poly`).
- Annealed evaluation (`eval.anneal_steps` > 0): an intermediate validation scores a fork of the
  run whose LR was cooled linearly to 0 over that many steps; the run then continues from its
  un-annealed state (weights, optimizer, RNG restored). `val_miou` is then the annealed score and
  `val_miou_raw` the plain one, so a scheduler ranks what the config would reach if it ended here.
- An epoch is one pass over the training split, or `budget.iters_per_epoch` steps (cycling the
  loader) so a search can set a fixed, dataset-independent budget.
- The training shuffle order of epoch e is drawn from `seed + e`, so a run resumed at an epoch
  boundary sees the same batches as an uninterrupted one.
- mIoU and pixel accuracy are reported in percent ("mIoU points"). The per-epoch validation is
  single-scale; `eval.tta` applies to a finished training's final evaluation (hpo.training.outputs).
- A non-finite loss stops the run at once with `DivergenceError` (a search records the trial as
  failed and goes on).

Runtime (`runtime.*`, resolved by `resolve_runtime`; "auto" = on for a CUDA run, off on CPU):
- `amp`: auto -> bf16 on GPU (no loss scaling needed: bf16 has fp32's exponent range); fp16 runs
  with a GradScaler; CPU stays fp32 unless asked (bf16 autocast is slower than fp32 on CPUs without
  AMX). `channels_last`: model and input batches in NHWC (tensor-core convs want it).
  `cudnn_benchmark`: auto -> on for CUDA unless `runtime.deterministic` (autotuning may pick
  non-deterministic kernels). Host->device copies are non-blocking on CUDA (the loaders pin memory
  when a GPU is visible). `compile`: opt-in `torch.compile` of the forward (minutes of compile time
  on paper-size models: worth it for long runs, not for short search trials).
- The train and val loaders are built once per Trainer, so `data.workers > 0` workers really
  persist across epochs (a fresh DataLoader per epoch would fork them anew). The training sampler's
  generator is re-seeded at each epoch start; the loaders' own worker base seeds come from a
  separate generator, so the batches of an epoch do not depend on how many epochs this process
  has run (a resumed run sees the same batches) and validation never touches the global RNG.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

import datasets
from datasets.inference import predict_logits
from datasets.transforms import denormalize
from datasets.metrics import ConfusionMatrix
from models import build_model, seg_loss

from hpo.config import normalize
from hpo.training.files import atomic_path
from hpo.training.schedules import lr_factor


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class ValidationResult:
    metrics: dict[str, float]
    per_class_iou: dict[str, float]
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # image, pred, gt
    confusion: np.ndarray | None = None    # (num_classes, num_classes) int64, rows = ground truth


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(cfg: dict) -> torch.device:
    want = cfg["runtime"]["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device: cuda requested but no GPU is visible")
    return torch.device(want)


def _auto(value, default: bool) -> bool:
    return default if value == "auto" else bool(value)


@dataclass(frozen=True)
class RuntimeSettings:
    """`runtime.*` resolved for one device ("auto" replaced by what that device wants)."""
    amp_dtype: torch.dtype | None      # autocast dtype; None = fp32
    grad_scaler: bool                  # fp16 needs loss scaling, bf16 does not
    channels_last: bool
    cudnn_benchmark: bool | None       # None: not a CUDA run, cuDNN left alone
    non_blocking: bool                 # host->device copies (CUDA only)
    compile: bool


def resolve_runtime(cfg: dict, device: torch.device | str) -> RuntimeSettings:
    """What the training loop does on `device` for this run config (testable without a GPU)."""
    rt = normalize(cfg)["runtime"]
    on_gpu = torch.device(device).type == "cuda"
    amp = rt["amp"] if rt["amp"] != "auto" else ("bf16" if on_gpu else "off")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    return RuntimeSettings(amp_dtype=dtype, grad_scaler=dtype is torch.float16,
                           channels_last=_auto(rt["channels_last"], on_gpu),
                           cudnn_benchmark=_auto(rt["cudnn_benchmark"], not rt["deterministic"]) if on_gpu else None,
                           non_blocking=on_gpu, compile=bool(rt["compile"]))


def predict(forward: Callable, image: torch.Tensor, label_size: tuple[int, int], cfg: dict,
            num_classes: int, tta: bool) -> torch.Tensor:
    """Class ids at the label's resolution: one forward pass, or multi-scale + flip TTA / sliding
    window as `eval.*` says. Shared by validation during training and `hpo.evaluate`."""
    ev = cfg["eval"]
    crop = tuple(cfg["data"]["crop"]) if ev["sliding"] else None
    if tta or crop:
        return predict_logits(forward, image, scales=tuple(ev["scales"]) if tta else (1.0,), flip=tta and ev["flip"],
                              crop=crop, num_classes=num_classes, out_size=label_size).argmax(1)
    logits = forward(image)["out"]
    if tuple(logits.shape[-2:]) != tuple(label_size):    # data.val_full_res_labels: score at label size
        logits = torch.nn.functional.interpolate(logits.float(), size=label_size, mode="bilinear",
                                                 align_corners=False)
    return logits.argmax(1)


@torch.no_grad()
def validation_pass(forward: Callable, batches, cfg: dict, data, device: torch.device, tta: bool, *,
                    to_device: Callable | None = None, autocast: Callable = contextlib.nullcontext,
                    each: Callable | None = None) -> ConfusionMatrix:
    """The one validation loop (training's validations and `hpo.evaluate`): predict every batch at its
    label's resolution, accumulate the confusion matrix, hand `each(batch, pred, label)` the rest."""
    cm = ConfusionMatrix(data.num_classes, ignore_index=data.ignore_index, device=device)
    for batch in batches:
        image, label = (to_device(batch) if to_device else (batch["image"].to(device), batch["label"].to(device)))
        with autocast():
            pred = predict(forward, image, tuple(label.shape[-2:]), cfg, data.num_classes, tta)
        cm.update(pred, label)
        if each is not None:
            each(batch, pred, label)
    return cm


def scores(cm: ConfusionMatrix, class_names) -> tuple[dict[str, float], dict[str, float]]:
    """(val_miou and val_pixel_acc, per-class IoU by name), in percent."""
    res = cm.compute()
    per_class = {n: float(v) * 100 for n, v in zip(class_names, res["per_class_iou"])}
    return {"val_miou": float(res["miou"]) * 100, "val_pixel_acc": float(res["pixel_acc"]) * 100}, per_class


class Trainer:
    # Data parallel (hpo.training.distributed sets these): this process's rank of `world` and its shards.
    rank, world = 0, 1

    def __init__(self, cfg: dict, log: Callable[[str], None] = print):
        self.cfg = cfg = normalize(cfg)
        self.log = log
        rt = cfg["runtime"]
        if rt["threads"]:
            torch.set_num_threads(rt["threads"])
        if rt["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg["seed"])
        self.device = resolve_device(cfg)
        self.runtime = run = resolve_runtime(cfg, self.device)
        self.amp_dtype = run.amp_dtype
        self.channels_last = run.channels_last
        if run.cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = run.cudnn_benchmark

        self.data = datasets.build(cfg)
        # Built once (see the module docstring): persistent workers, per-epoch re-seeded sampler.
        self._epoch_gen = torch.Generator()
        self._train_dl = self.data.train_loader(generator=self._epoch_gen, rank=self.rank, world=self.world)
        self._train_dl.generator = torch.Generator().manual_seed(cfg["seed"])   # worker base seeds only
        self._val_dl = self.data.val_loader(rank=self.rank, world=self.world)
        self._val_dl.generator = torch.Generator().manual_seed(cfg["seed"])
        self.model: nn.Module = build_model(cfg).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if run.compile else self.model
        self.ddp_forward = None      # hpo.training.distributed: the DDP wrapper training steps go through
        o = cfg["optim"]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o["lr"], momentum=o["momentum"],
                                         weight_decay=o["weight_decay"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=run.grad_scaler)

        self.steps_per_epoch = cfg["budget"]["iters_per_epoch"] or len(self.train_loader(0))
        self.total_steps = self.steps_per_epoch * cfg["budget"]["epochs"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(o, self.steps_per_epoch, self.total_steps))
        self.epoch = 0          # epochs finished
        self.step = 0           # optimizer steps taken

    # --- data -------------------------------------------------------------------------------
    def train_loader(self, epoch: int):
        """The training loader, its shuffle/augmentation stream set to epoch `epoch`."""
        self._epoch_gen.manual_seed(self.cfg["seed"] * 1000 + epoch)
        return self._train_dl

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        nb = self.runtime.non_blocking
        image = batch["image"].to(self.device, non_blocking=nb)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, batch["label"].to(self.device, non_blocking=nb)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- training ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        start = time.perf_counter()
        total, count = 0.0, 0
        for batch in self._batches(self.epoch, self.steps_per_epoch):
            value = self._sgd_step(batch)
            self.scheduler.step()
            self.step += 1
            total += value
            count += 1
        self.epoch += 1
        return {"train_loss": total / max(count, 1),
                "lr": self.optimizer.param_groups[0]["lr"],
                "epoch_seconds": time.perf_counter() - start}

    def _batches(self, epoch: int, steps: int):
        """`steps` training batches from epoch `epoch`'s stream (cycling when one pass is shorter)."""
        loader = self.train_loader(epoch)
        batches = iter(loader)
        for _ in range(steps):
            try:
                yield next(batches)
            except StopIteration:      # iters_per_epoch longer than one pass: cycle
                batches = iter(loader)
                yield next(batches)

    def _sgd_step(self, batch: dict) -> float:
        image, label = self._to_device(batch)
        with self._autocast():
            outputs = (self.ddp_forward or self.forward)(image)
            loss, _terms = seg_loss(outputs, label, self.cfg)
        value = self.mean_over_ranks(loss.item())
        if not math.isfinite(value):
            raise DivergenceError(f"loss became {value} at step {self.step + 1} (epoch {self.epoch + 1})")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    def annealed_validate(self, steps: int | None = None, **validate_kwargs) -> ValidationResult:
        """Score a cool-down fork: `steps` SGD steps with the LR falling linearly from its current
        value to 0 (on the next epoch's batches), validate, then restore the run exactly as it was."""
        steps = self.cfg["eval"]["anneal_steps"] if steps is None else steps
        saved = {"model": copy.deepcopy(self.model.state_dict()),
                 "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                 "scaler": copy.deepcopy(self.scaler.state_dict()),
                 "rng": (torch.get_rng_state(), np.random.get_state(), random.getstate()),
                 "loader_seeds": self._train_dl.generator.get_state()}   # iter() draws worker base seeds
        lr0 = [g["lr"] for g in self.optimizer.param_groups]
        try:
            self.model.train()
            for i, batch in enumerate(self._batches(self.epoch, steps)):
                for group, lr in zip(self.optimizer.param_groups, lr0):
                    group["lr"] = lr * (1.0 - i / steps)
                self._sgd_step(batch)
            return self.validate(**validate_kwargs)
        finally:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scaler.load_state_dict(saved["scaler"])
            torch.set_rng_state(saved["rng"][0])
            np.random.set_state(saved["rng"][1])
            random.setstate(saved["rng"][2])
            self._train_dl.generator.set_state(saved["loader_seeds"])

    def wants_anneal(self) -> bool:
        """Whether the validation after the epoch just finished scores a cool-down fork."""
        ev = self.cfg["eval"]
        if not ev["anneal_steps"] or self.epoch >= self.cfg["budget"]["epochs"]:
            return False
        return ev["anneal_epochs"] is None or self.epoch in ev["anneal_epochs"]

    @torch.no_grad()
    def validate(self, *, tta: bool | None = None, keep: int | None = None) -> ValidationResult:
        """mIoU on the val split; `tta` overrides eval.tta, `keep` how many samples to return."""
        ev = self.cfg["eval"]
        tta = ev["tta"] if tta is None else tta
        keep = ev["overlays"] if keep is None else keep
        self.sync_buffers()
        self.model.eval()
        samples = []

        def keep_samples(batch, pred, label):
            for i in range(min(keep - len(samples), pred.shape[0])):
                samples.append((denormalize(batch["image"][i]), pred[i].cpu().numpy(), label[i].cpu().numpy()))

        cm = validation_pass(self.forward, self._val_dl, self.cfg, self.data, self.device, tta,
                             to_device=self._to_device, autocast=self._autocast, each=keep_samples)
        cm = cm.all_reduce()      # the ranks' shards summed (no-op in one process)
        return ValidationResult(*scores(cm, self.data.class_names), samples, cm.mat.cpu().numpy())

    def mean_over_ranks(self, value: float) -> float:
        """Data parallel only: the loss averaged over the ranks (all see the same NaN at once)."""
        return value

    def sync_buffers(self) -> None:
        """Data parallel only (hpo.training.distributed): every rank validates with rank 0's BatchNorm stats."""

    def fit(self, on_validation: Callable[["Trainer", dict, ValidationResult], None] | None = None
            ) -> dict[str, float]:
        """Train until the epoch budget; after each validation call `on_validation(self, metrics, val)`."""
        metrics: dict[str, float] = {}
        budget = self.cfg["budget"]
        while self.epoch < budget["epochs"]:
            metrics = {"epoch": self.epoch + 1, **self.train_epoch()}
            if self.epoch % budget["val_every"] == 0 or self.epoch == budget["epochs"]:
                val = self.validate(tta=False)         # curves are single-scale (hpo.training.outputs)
                if self.wants_anneal():
                    start = time.perf_counter()
                    metrics.update({f"{k}_raw": v for k, v in val.metrics.items()})
                    val = self.annealed_validate(tta=False)
                    metrics["anneal_seconds"] = time.perf_counter() - start
                metrics.update(val.metrics)
                if on_validation:
                    on_validation(self, metrics, val)
        return metrics

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "step": self.step,
                "rng": {"torch": torch.get_rng_state(), "numpy": _np_state(), "python": _py_state()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(("MT19937", rng["numpy"]["keys"].numpy().astype(np.uint32),
                             int(rng["numpy"]["pos"]), 0, 0.0))
        random.setstate((3, tuple(int(x) for x in rng["python"]), None))

    def save(self, path: str | Path) -> None:
        save_checkpoint(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(load_checkpoint(path, self.device))


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write atomically: a killed process leaves the previous checkpoint intact, never half a file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return torch.load(path, map_location=device, weights_only=True)


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Weights from a training checkpoint (dict with 'model') or a bare state_dict."""
    state = load_checkpoint(path)
    model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)


# RNG states as tensors/lists so checkpoints stay loadable with weights_only=True.
def _np_state() -> dict:
    _, keys, pos, _, _ = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)}


def _py_state() -> list[int]:
    return list(random.getstate()[1])
