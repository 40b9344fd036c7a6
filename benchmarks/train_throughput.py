"""Training throughput (images/s) per model: fp32 eager baseline vs the training loop's tuned defaults.

    python -m benchmarks.train_throughput                       # CPU: toy presets, 128x128, batch 2
    python -m benchmarks.train_throughput --device cuda         # GPU: paper presets, 512x512, batch 8
    python -m benchmarks.train_throughput --device cuda --compile   # + opt-in torch.compile
    ... --write        # also replace this device's section of benchmarks/RESULTS.md

What one step is: the body of `hpo.training.trainer.Trainer.train_epoch` — host->device copy of a batch, forward
under the run's autocast, `models.seg_loss` (main + aux terms), GradScaler-wrapped backward, SGD
step — on synthetic tensors (random images and labels made once, so the data pipeline is not
measured; the loaders' part is covered by persistent workers and pinned memory, not timed here).
The switches come from `hpo.training.trainer.resolve_runtime`, i.e. exactly what a run config resolves to:

- `fp32 eager`: `runtime: {amp: off, channels_last: false, cudnn_benchmark: false}`, blocking
  copies from pageable memory — the loop with every switch off.
- `tuned`: the default `runtime` (all "auto") on this device: on CUDA bf16 autocast, channels_last,
  cudnn.benchmark, pinned + non-blocking copies (+ `torch.compile` with `--compile`). On CPU the
  defaults *are* fp32 eager ("auto" = off on CPU), so the CPU run also times `gpu switches on cpu`
  (bf16 + channels_last forced) for information; the GPU rows stay pending until run on a GPU.

Paper size: 512x512 crops (msglore paper: Cityscapes resized to 512x1024, 512x512 crops; the
SpaceMeshLab paper gives batch 8 but no crop size, so it gets the same crop), batch 8, presets
`models.preset(name, "paper")` (ResNet-50, SpaceMeshLab ResNet-101 with the 18x18 MetroCon² grid).

Timing: every round runs `--steps` steps of every variant in turn (interleaved, so a busy shared
machine slows all variants alike; the order rotates per round), after `--warmup` untimed steps (cuDNN autotuning, compilation);
images/s is the median over rounds and the speedup the median of per-round ratios.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

from hpo.training.trainer import RuntimeSettings, resolve_runtime
from models import build_model, model_names, preset, seg_loss
from benchmarks.results import write_section

HEADING = "## Training throughput ({}): fp32 eager vs tuned runtime defaults"
EAGER = {"amp": "off", "channels_last": False, "cudnn_benchmark": False, "compile": False}
GPU_SWITCHES = {"amp": "bf16", "channels_last": True}


def run_config(model: str, kind: str, runtime: dict) -> dict:
    cfg = preset(model, kind)
    cfg["runtime"] = dict(runtime)
    return cfg


class Variant:
    """One model instance + optimizer, stepped exactly like the engine's training loop."""

    def __init__(self, name: str, cfg: dict, device: torch.device, images: torch.Tensor, labels: torch.Tensor,
                 settings: RuntimeSettings):
        torch.manual_seed(0)
        self.name, self.cfg, self.device, self.s = name, cfg, device, settings
        self.model = build_model(cfg).to(device).train()
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if settings.compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.grad_scaler)
        # pinned host batch when the loop copies non-blocking (what the loaders do on a GPU machine)
        pin = settings.non_blocking and device.type == "cuda"
        self.images = images.pin_memory() if pin else images
        self.labels = labels.pin_memory() if pin else labels

    def step(self) -> None:
        s = self.s
        if s.cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = s.cudnn_benchmark
        image = self.images.to(self.device, non_blocking=s.non_blocking)
        if s.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        label = self.labels.to(self.device, non_blocking=s.non_blocking)
        ctx = (torch.autocast(self.device.type, dtype=s.amp_dtype) if s.amp_dtype is not None
               else torch.autocast(self.device.type, enabled=False))
        with ctx:
            loss, _ = seg_loss(self.forward(image), label, self.cfg)
        loss.item()                      # the engine reads the loss every step (divergence check)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(model: str, args, device: torch.device) -> dict:
    b, (h, w) = args.batch, args.size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, h, w, generator=gen)
    num_classes = preset(model, args.preset)["model"]["num_classes"]
    labels = torch.randint(0, num_classes, (b, h, w), generator=gen)
    variants = {"fp32 eager": EAGER,
                "tuned": {"compile": True} if args.compile else {}}
    if device.type == "cpu":
        variants["gpu switches on cpu"] = GPU_SWITCHES
    built = {}
    for name, rt in variants.items():
        cfg = run_config(model, args.preset, rt)
        built[name] = Variant(name, cfg, device, images, labels, resolve_runtime(cfg, device))
    now = time.thread_time if args.clock == "cpu" else time.perf_counter
    warm_s = {}
    for v in built.values():
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            v.step()
        _sync(device)
        warm_s[v.name] = time.perf_counter() - t0
    times = {name: [] for name in built}
    peak = {}
    order = list(built.values())
    for rnd in range(args.rounds):
        for v in order[rnd % len(order):] + order[:rnd % len(order)]:   # rotate: no variant always goes first
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = now()
            for _ in range(args.steps):
                v.step()
            _sync(device)
            times[v.name].append(now() - t0)
            if device.type == "cuda":
                peak[v.name] = torch.cuda.max_memory_allocated(device)
    imgs = args.steps * b
    rows = []
    for name, v in built.items():
        ratio = statistics.median(te / t for te, t in zip(times["fp32 eager"], times[name]))
        rows.append({"model": model, "variant": name, "ips": imgs / statistics.median(times[name]),
                     "speedup": ratio, "warmup_s": warm_s[name], "peak": peak.get(name), "switches": describe(v.s)})
    del built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def describe(s: RuntimeSettings) -> str:
    parts = [{None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16+scaler"}[s.amp_dtype]]
    if s.channels_last:
        parts.append("channels_last")
    if s.cudnn_benchmark:
        parts.append("cudnn.benchmark")
    if s.non_blocking:
        parts.append("pinned non-blocking copies")
    if s.compile:
        parts.append("compile")
    return ", ".join(parts)


def table(rows: list[dict], cuda: bool) -> str:
    head = "| model | variant | switches | images/s | × fp32 eager | warm-up (s) |" + (" peak MiB |" if cuda else "")
    sep = "|---|---|---|---:|---:|---:|" + ("---:|" if cuda else "")
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['model']} | {r['variant']} | {r['switches']} | {r['ips']:.2f} | {r['speedup']:.2f} | "
                f"{r['warmup_s']:.1f} |")
        if cuda:
            line += f" {r['peak'] / 2**20:.0f} |"
        lines.append(line)
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size: expected HxW, got {text!r}") from None
    if min(h, w) < 8:
        raise argparse.ArgumentTypeError(f"--size: expected HxW >= 8x8, got {text!r}")
    return h, w


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--models", default=",".join(model_names()), help="comma list (default: all)")
    p.add_argument("--preset", choices=("toy", "paper"), help="model presets (default: toy on CPU, paper on CUDA)")
    p.add_argument("--size", type=_size, help="HxW input (default: 128x128 on CPU, 512x512 on CUDA)")
    p.add_argument("--batch", type=int, help="batch size (default: 2 on CPU, 8 on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 5 CPU, 20 CUDA)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 10 CUDA)")
    p.add_argument("--compile", action="store_true", help="tuned variant with runtime.compile: true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the main thread's CPU time (needs --device cpu --threads 1; steady on a busy machine)")
    p.add_argument("--write", action="store_true", help="replace this device's section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no GPU visible")
    args.preset = args.preset or ("paper" if cuda else "toy")
    args.size = args.size or ((512, 512) if cuda else (128, 128))
    args.batch = args.batch or (8 if cuda else 2)
    args.steps = args.steps or (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and (cuda or torch.get_num_threads() != 1):
        p.error("--clock cpu: measures one thread's CPU time, so it needs --device cpu --threads 1")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in model_names():
            p.error(f"--models: unknown model {m!r}; expected some of {', '.join(model_names())}")

    where = (torch.cuda.get_device_name(device) if cuda
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    command = ("python -m benchmarks.train_throughput " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    header = (f"{datetime.date.today()}, {where}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}. "
              f"Command: `{command}`. {args.preset} presets, batch {args.batch} x 3x{args.size[0]}x{args.size[1]}, "
              f"{args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up steps, {args.clock} clock.")
    print(header + "\n", flush=True)
    rows = []
    for m in models:
        t0 = time.perf_counter()
        rows += bench_model(m, args, device)
        print(f"  {m}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if not cuda:
        note = ("CPU run: the tuned defaults resolve to fp32 eager on CPU (runtime 'auto' = off), so 'tuned' is the "
                "baseline again (its ratio shows the measurement noise); the GPU rows (paper presets, goal >= 2x fp32 "
                "eager) are pending a run of `python -m benchmarks.train_throughput --device cuda --write` "
                "(add `--compile` for the opt-in torch.compile).")
    else:
        worst = min(r["speedup"] for r in rows if r["variant"] == "tuned")
        note = f"Slowest tuned speedup: {worst:.2f}x (goal >= 2x fp32 eager)."
    print(table(rows, cuda) + "\n\n" + note)
    if args.write:
        heading = HEADING.format("GPU" if cuda else "CPU")
        write_section(heading, "\n".join([heading, "", header, "", table(rows, cuda), "", note]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
