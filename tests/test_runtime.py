"""`runtime.*` switches of the training loop are honoured (CPU checks of the GPU-ready code paths).

What a CUDA run would do is checked through `resolve_runtime(cfg, "cuda")`, which needs no GPU; what
the loop actually does is observed by wrapping `Trainer.forward` and running one real step.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_run_config
from helpers import child_pids
from hpo.config import ConfigError
from hpo.training.trainer import Trainer, resolve_runtime


def one_step_config(data_root, **overrides) -> dict:
    return tiny_run_config(data_root, **{"budget.epochs": 1, "budget.iters_per_epoch": 1, "runtime.device": "cpu",
                                         **overrides})


def watch_forward(trainer: Trainer) -> list[dict]:
    """Record, for every training/validation forward, the autocast state and the input layout."""
    seen: list[dict] = []
    inner = trainer.forward

    def forward(x):
        out = inner(x)
        seen.append({"autocast": torch.is_autocast_enabled("cpu"), "autocast_dtype": torch.get_autocast_dtype("cpu"),
                     "channels_last": x.is_contiguous(memory_format=torch.channels_last),
                     "out_dtype": out["out"].dtype})
        return out

    trainer.forward = forward
    return seen


def conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]


def test_gpu_defaults_resolve_without_a_gpu(tiny_data):
    cfg = tiny_run_config(tiny_data)
    gpu = resolve_runtime(cfg, "cuda")
    assert gpu.amp_dtype is torch.bfloat16 and not gpu.grad_scaler      # bf16 needs no loss scaling
    assert gpu.channels_last and gpu.cudnn_benchmark and gpu.non_blocking
    assert not gpu.compile                                              # opt-in only
    cpu = resolve_runtime(cfg, "cpu")
    assert cpu.amp_dtype is None and not cpu.channels_last and not cpu.non_blocking
    assert cpu.cudnn_benchmark is None                                  # cuDNN left alone off-GPU


def test_explicit_switches_override_the_gpu_defaults(tiny_data):
    cfg = tiny_run_config(tiny_data, **{"runtime.amp": "fp16", "runtime.channels_last": False,
                                        "runtime.compile": True})
    gpu = resolve_runtime(cfg, "cuda")
    assert gpu.amp_dtype is torch.float16 and gpu.grad_scaler
    assert not gpu.channels_last and gpu.compile
    off = resolve_runtime(tiny_run_config(tiny_data, **{"runtime.amp": "off"}), "cuda")
    assert off.amp_dtype is None
    # autotuned cuDNN kernels may be non-deterministic: a deterministic run turns it off unless asked
    assert resolve_runtime(tiny_run_config(tiny_data, **{"runtime.deterministic": True}), "cuda").cudnn_benchmark is False
    forced = tiny_run_config(tiny_data, **{"runtime.deterministic": True, "runtime.cudnn_benchmark": True})
    assert resolve_runtime(forced, "cuda").cudnn_benchmark is True


@pytest.mark.parametrize("key,value", [("runtime.amp", "fp8"), ("runtime.channels_last", "yes"),
                                       ("runtime.compile", "maybe")])
def test_bad_runtime_value_is_one_line_naming_the_key(tiny_data, key, value):
    with pytest.raises(ConfigError) as err:
        resolve_runtime(tiny_run_config(tiny_data, **{key: value}), "cpu")
    assert str(err.value).startswith(f"{key}:") and "\n" not in str(err.value)


def test_bf16_on_cpu_autocasts_in_channels_last(tiny_data):
    trainer = Trainer(one_step_config(tiny_data, **{"runtime.amp": "bf16", "runtime.channels_last": True}),
                      log=lambda *_: None)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(trainer.model))
    assert not trainer.scaler.is_enabled()
    seen = watch_forward(trainer)
    metrics = trainer.fit()
    assert seen, "the training loop never called the forward"
    assert all(s["autocast"] and s["autocast_dtype"] is torch.bfloat16 for s in seen)
    assert all(s["channels_last"] and s["out_dtype"] is torch.bfloat16 for s in seen)
    assert 0.0 <= metrics["val_miou"] <= 100.0
    # the weights the optimizer updates stay fp32 (autocast casts per op, not the master copy)
    assert all(p.dtype is torch.float32 for p in trainer.model.parameters())


def test_fp16_trains_through_a_grad_scaler_and_checkpoints_it(tiny_data):
    trainer = Trainer(one_step_config(tiny_data, **{"runtime.amp": "fp16"}), log=lambda *_: None)
    assert trainer.scaler.is_enabled()
    seen = watch_forward(trainer)
    trainer.train_epoch()
    assert seen[0]["autocast"] and seen[0]["autocast_dtype"] is torch.float16
    assert seen[0]["out_dtype"] is torch.float16
    state = trainer.state_dict()["scaler"]
    assert state["scale"] > 1.0                 # a live loss scale, carried in checkpoints for resume
    other = Trainer(one_step_config(tiny_data, **{"runtime.amp": "fp16"}), log=lambda *_: None)
    other.load_state_dict(trainer.state_dict())
    assert other.scaler.get_scale() == trainer.scaler.get_scale()


def test_cpu_default_is_plain_fp32(tiny_data):
    trainer = Trainer(one_step_config(tiny_data), log=lambda *_: None)
    seen = watch_forward(trainer)
    trainer.train_epoch()
    assert not seen[0]["autocast"] and not seen[0]["channels_last"]
    assert seen[0]["out_dtype"] is torch.float32
    assert not trainer.scaler.is_enabled()


def test_compile_is_opt_in_and_checkpoints_keep_plain_keys(tiny_data):
    plain = Trainer(one_step_config(tiny_data), log=lambda *_: None)
    assert plain.forward is plain.model
    compiled = Trainer(one_step_config(tiny_data, **{"runtime.compile": True}), log=lambda *_: None)
    assert isinstance(compiled.forward, torch._dynamo.eval_frame.OptimizedModule)
    # checkpoints hold the uncompiled module's keys: loadable with or without compile
    assert list(compiled.state_dict()["model"]) == list(plain.state_dict()["model"])


def _epoch_names(trainer: Trainer, epoch: int) -> list[str]:
    names = []
    batches = iter(trainer.train_loader(epoch))
    for _ in range(trainer.steps_per_epoch):
        names += next(batches)["name"]
    return names


def test_loader_workers_persist_across_epochs_with_reproducible_batches(tiny_data):
    cfg = tiny_run_config(tiny_data, **{"data.workers": 1, "runtime.device": "cpu", "budget.iters_per_epoch": 2})
    before = child_pids()
    trainer = Trainer(cfg, log=lambda *_: None)
    first = _epoch_names(trainer, 0)
    workers = child_pids() - before                 # the loader's worker processes, started by epoch 0
    assert len(workers) == 1
    second = _epoch_names(trainer, 1)
    assert child_pids() - before == workers                                  # same worker processes
    assert first != second                                                   # reshuffled per epoch
    # a fresh process (a resumed run) sees the same batches for epoch 1 as one that ran epoch 0 first
    assert _epoch_names(Trainer(cfg, log=lambda *_: None), 1) == second
    # ... and the same as without workers
    assert _epoch_names(Trainer(dict(cfg, data=dict(cfg["data"], workers=0)), log=lambda *_: None), 1) == second


def test_validation_leaves_the_global_rng_alone(tiny_data):
    # resume safety: a checkpoint's RNG state must not depend on how many validations ran before
    trainer = Trainer(one_step_config(tiny_data, **{"data.workers": 1}), log=lambda *_: None)
    before = torch.get_rng_state()
    trainer.validate()
    trainer.validate()
    assert torch.equal(before, torch.get_rng_state())
