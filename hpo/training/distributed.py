"""The engine as one rank of a data-parallel (DDP) training: `DistributedTrainer(cfg)`.

Runs inside an initialised torch.distributed process group (Ray Train's TorchTrainer sets one up:
Gloo on CPU, NCCL on GPUs; torchrun would do as well: nothing here imports Ray). What changes
against the single-process `Trainer` (hpo.training.trainer):

- Model: `self.model` stays the unwrapped module (checkpoints without `module.` keys, validation,
  the weights a promotion registers); training steps go through
  `torch.nn.parallel.DistributedDataParallel` (`self.ddp_forward`), which averages the gradients.
  `sync_bn` converts BatchNorm to SyncBatchNorm first (CUDA only: torch's SyncBatchNorm refuses
  CPU modules). Parameters that get no gradient (an aux head with weight 0) turn on
  `find_unused_parameters`.
- Data: rank r trains on the r-th `batch_size / world` slice of every global batch of the
  single-process sampler stream (datasets/bundle.py `ShardedSeededSampler`), so `data.batch_size`
  stays the global batch, the per-epoch reseeding and exact resume are kept, and the ranks' step-k
  batches together are the single-process step-k batch. Each rank validates a contiguous shard of
  the val split and the confusion matrices are summed; before validating, every rank takes rank
  0's BatchNorm running stats (DDP syncs buffers only at the start of a training forward), so the
  score is the whole-split score of the weights rank 0 checkpoints.
- The loss is averaged over the ranks before the finiteness check: every rank raises
  DivergenceError at the same step instead of one rank hanging in a collective.
- Each rank draws its own dropout stream (`seed * 1000 + 7919 * rank`); `state_dict()` is a
  collective that adds every rank's torch RNG state, so a resumed rank continues its own stream.
  Every rank must call it; only rank 0 writes the file.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from hpo.training.trainer import Trainer


def weights_fingerprint(model: nn.Module) -> float:
    """A cheap number that differs when two ranks' parameters differ (sum and sum of squares)."""
    with torch.no_grad():
        total = 0.0
        for i, p in enumerate(model.parameters()):
            q = p.detach().double()
            total += float(q.sum()) * (i + 1) + float((q * q).sum())
    return total


class DistributedTrainer(Trainer):
    def __init__(self, cfg: dict, log=print, sync_bn: bool = False):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DistributedTrainer needs an initialised torch.distributed process group")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        super().__init__(cfg, log=log)
        cfg = self.cfg
        torch.manual_seed(cfg["seed"] * 1000 + 7919 * self.rank)     # the ranks' own dropout streams
        if sync_bn:
            if self.device.type != "cuda":
                raise ValueError("resources.sync_bn: torch's SyncBatchNorm needs CUDA modules; it is not "
                                 "available for CPU (Gloo) training")
            # keeps the same Parameter objects: the optimizer built above still points at them
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        unused = any(float(w) == 0.0 for w in cfg["loss"]["aux_weights"].values())
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        self.ddp_forward = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                               find_unused_parameters=unused)
        if self.runtime.compile:
            self.ddp_forward = torch.compile(self.ddp_forward)

    def mean_over_ranks(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def sync_buffers(self) -> None:
        for buf in self.model.buffers():
            dist.broadcast(buf.data, src=0)

    def gather(self, obj) -> list:
        """`obj` of every rank, in rank order (a collective)."""
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["rank_rng"] = self.gather(torch.get_rng_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)       # rank 0's RNGs everywhere, then this rank's own torch stream
        rngs = state.get("rank_rng")
        if rngs is not None and len(rngs) == self.world:
            torch.set_rng_state(rngs[self.rank])
