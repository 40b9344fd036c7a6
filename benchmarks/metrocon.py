"""MetroCon² speed benchmark: ASPP vs the per-conv reference vs the fused implementation.

    python -m benchmarks.metrocon                                   # CPU, (2, 512, 32, 32), 18x18 grid
    python -m benchmarks.metrocon --device cuda --dtype bf16 --shape 8,2048,64,128

Prints a markdown table. Per module: forward+backward time (median over ``--repeats`` rounds after
``--warmup`` rounds; every round runs every module once, interleaved, so a busy shared machine
slows all of them alike), the ratio to ASPP (median of the per-round ratios), FLOPs of one
forward+backward (``torch.utils.flop_counter``: executed convs/GEMMs, so the fused version's count
excludes the taps it skips), the work rate relative to ASPP (the *reference's* FLOPs per second, so
skipped work counts as done), and peak memory above the start of one forward+backward — on CPU
from the profiler's allocation events (``torch.profiler``, ``profile_memory=True``), on CUDA from
``torch.cuda.max_memory_allocated``. Modules are in train mode (BatchNorm batch statistics).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.aspp import ASPP
from models.metrocon import GRIDS, MetroCon2

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected B,C,H,W (4 positive ints), got {text!r}")
    return tuple(parts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    module(x).backward(grad)


def _flops(module, x, grad) -> int:
    with FlopCounterMode(display=False) as counter:
        _step(module, x, grad)
    return counter.get_total_flops()


def _peak_bytes(module, x, grad) -> int:
    device = x.device
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        _step(module, x, grad)
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(module, x, grad)

    def walk(events):
        for e in events:
            yield e
            yield from walk(e.children)

    allocs = sorted((e for e in walk(prof.profiler.kineto_results.experimental_event_tree())
                     if e.tag == _EventType.Allocation), key=lambda e: e.start_time_ns)
    return max([0] + [e.extra_fields.total_allocated for e in allocs])


def run(shape, device, dtype, grid_rows, grid_cols, impls, repeats, warmup, fused_band=None, clock="wall"):
    torch.manual_seed(0)
    b, c, h, w = shape
    modules = {}
    for impl in impls:
        if impl == "aspp":
            modules[impl] = ASPP(c)
        else:
            modules[impl] = MetroCon2(c, grid_rows, grid_cols, impl=impl, fused_band=fused_band)
    x = torch.randn(b, c, h, w, device=device, dtype=dtype, requires_grad=True)
    grads = {}
    for name, mod in modules.items():
        mod.to(device=device, dtype=dtype).train()
        grads[name] = torch.randn(b, mod.out_channels, h, w, device=device, dtype=dtype)

    now = time.thread_time if clock == "cpu" else time.perf_counter
    times = {name: [] for name in modules}
    for rnd in range(warmup + repeats):
        for name, mod in modules.items():
            mod.zero_grad(set_to_none=True)
            x.grad = None
            _sync(device)
            t0 = now()
            _step(mod, x, grads[name])
            _sync(device)
            if rnd >= warmup:
                times[name].append(now() - t0)

    rows = []
    for name, mod in modules.items():
        rows.append({"name": name, "time": statistics.median(times[name]), "times": times[name],
                     "flops": _flops(mod, x, grads[name]), "peak": _peak_bytes(mod, x, grads[name])})
    ref = next((r["flops"] for r in rows if r["name"] == "naive"), None)
    if ref is None and "fused" in modules:  # count the reference's FLOPs even when it is not timed
        naive = MetroCon2(c, grid_rows, grid_cols, impl="naive").to(device=device, dtype=dtype).train()
        ref = _flops(naive, x, grads["fused"])
    base = next((r for r in rows if r["name"] == "aspp"), None)
    for r in rows:
        # the work a module does is the reference's FLOPs (skipped zero-padding taps count as done)
        r["work"] = ref if r["name"] != "aspp" else r["flops"]
        if base is not None:
            r["ratio"] = statistics.median(t / ta for t, ta in zip(r["times"], base["times"]))
            r["efficiency"] = (r["work"] / r["time"]) / (base["flops"] / base["time"])
    return rows


def table(rows) -> str:
    lines = ["| module | fwd+bwd time (ms, median) | × ASPP | GFLOP fwd+bwd (executed) | work rate vs ASPP | peak memory (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "–"
        eff = f"{100 * r['efficiency']:.0f}%" if "efficiency" in r else "–"
        lines.append(f"| {r['name']} | {1e3 * r['time']:.1f} | {ratio} | {r['flops'] / 1e9:.2f} | {eff} | "
                     f"{r['peak'] / 2**20:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=_parse_shape, default=(2, 512, 32, 32), help="B,C,H,W (default 2,512,32,32)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--grid", choices=sorted(GRIDS), default="dense18x18", help="named dilation grid (rows = cols)")
    p.add_argument("--impls", default="aspp,naive,fused", help="comma list of aspp, naive, fused")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: perf_counter; cpu: CPU time of the calling thread (needs --threads 1; steady "
                        "on a shared, busy machine because time spent descheduled is not counted)")
    p.add_argument("--fused-band", type=int, default=None, help="MetroCon2 fused_band (default: feature size // 16)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and (args.device != "cpu" or torch.get_num_threads() != 1):
        p.error("--clock cpu: measures one thread's CPU time, so it needs --device cpu --threads 1")
    device = torch.device(args.device)
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    for impl in impls:
        if impl not in ("aspp", "naive", "fused"):
            p.error(f"--impls: unknown module {impl!r}; expected aspp, naive or fused")
    grid = list(GRIDS[args.grid])
    rows = run(args.shape, device, DTYPES[args.dtype], grid, grid, impls, args.repeats, args.warmup,
               args.fused_band, args.clock)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"MetroCon² {args.grid} vs ASPP(256, rates 12/24/36), input {args.shape}, {args.dtype}, {where}, "
          f"torch {torch.__version__}; {args.clock} clock, {args.repeats} rounds after {args.warmup} warm-up\n")
    print(table(rows))


if __name__ == "__main__":
    main()
