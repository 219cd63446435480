"""Benchmarks: shapecalc's full analysis against torch.export with dynamic H/W.

    python benchmarks/run.py [--repeat 3] [--quick] [--json results.json]

In one process, for FCN-8s, DeepLab-v3 (resnet18, resnet101) and a stack of
200 conv layers (all built on the meta device):

* shapecalc: ``trace`` + ``analyze(model, "HxW")`` (sizes, domain, crops,
  merges, resampling audits), sympy's caches cleared before every run so no
  run profits from an earlier one;
* ``torch.export`` with ``Dim.AUTO`` on H and W, and with named ``Dim``s
  (``Dim("H", min=1)``), which FCN-8s refuses with "Constraints violated";

each after one warm-up call of both tools on a small net (one-time imports
are reported apart).  Then analysis time against depth (conv stacks of 25 to
400 layers), and the cold start of ``shapecalc trace fcn8s --input H`` against
``python -c "import torch"``, each in fresh processes.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time


def machine() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "")
    except OSError:
        model = ""
    import os

    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def conv_stack(depth: int, stride_every: int = 25):
    """``depth`` 3x3 convs (with ReLU); every ``stride_every``-th has stride 2."""
    import torch.nn as nn

    layers = []
    for i in range(depth):
        stride = 2 if (i + 1) % stride_every == 0 else 1
        layers += [nn.Conv2d(8, 8, 3, stride=stride, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


def build(name: str):
    import torch

    from shapecalc import load_model

    if name == "fcn8s":
        return load_model("fcn8s")
    if name == "deeplabv3-resnet18":
        return load_model("deeplabv3", {"backbone": "resnet18"})
    if name == "deeplabv3-resnet101":
        return load_model("deeplabv3", {"backbone": "resnet101"})
    depth = int(name.split("-")[1])
    with torch.device("meta"):
        return conv_stack(depth).eval()


def channels_of(name: str) -> int:
    return 8 if name.startswith("conv") else 3


def clear_caches() -> None:
    from sympy.core.cache import clear_cache

    from shapecalc.engine import domain

    from shapecalc.engine import symbolic

    clear_cache()
    symbolic.compiled.cache_clear()
    domain.period_of.cache_clear()


class Clock:
    """Wall and CPU time of a block.  CPU time is the figure to compare on a
    shared machine: other processes stretch wall time, not CPU time."""

    def __enter__(self):
        gc.collect()  # start each measurement without the previous one's garbage
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return False


def time_shapecalc(name: str) -> Clock:
    from shapecalc import analyze

    model = build(name)
    clear_caches()
    with Clock() as clock:
        analysis = analyze(model, "HxW", name=name)
    assert analysis.layers
    return clock


def time_export(name: str, named: bool) -> tuple[Clock, str]:
    import torch
    from torch.export import Dim, export

    model = build(name)
    # meta tensors cost nothing, and 512 keeps every layer of the conv stack above 1
    x = torch.empty(1, channels_of(name), 512, 512, device="meta")
    if named:
        dynamic = ({2: Dim("H", min=1, max=8192), 3: Dim("W", min=1, max=8192)},)
    else:
        dynamic = ({2: Dim.AUTO, 3: Dim.AUTO},)
    clock = Clock()
    try:
        with clock:
            program = export(model, (x,), dynamic_shapes=dynamic)
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return clock, f"fails: {type(error).__name__}: {message[:80]}"
    ranges = ", ".join(f"{v.lower}..{'inf' if v.upper > 10**12 else v.upper}"
                       for v in program.range_constraints.values())
    return clock, f"ok ({ranges})"


def warm_up() -> dict:
    """One call of each tool on a small net: imports and first-call setup."""
    import torch
    import torch.nn as nn

    started = time.perf_counter()
    from shapecalc import analyze

    with torch.device("meta"):
        small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2, ceil_mode=True)).eval()
    analyze(small, "HxW")
    shapecalc_seconds = time.perf_counter() - started
    started = time.perf_counter()
    from torch.export import Dim, export

    export(small, (torch.empty(1, 3, 16, 16, device="meta"),), dynamic_shapes=({2: Dim.AUTO, 3: Dim.AUTO},))
    return {"shapecalc": shapecalc_seconds, "export": time.perf_counter() - started}


def compare(models: list[str], repeat: int) -> list[dict]:
    rows = []
    for name in models:
        ours = [time_shapecalc(name) for _ in range(repeat)]
        auto = [time_export(name, named=False) for _ in range(max(1, repeat - 1))]
        named_clock, named_status = time_export(name, named=True)
        row = {
            "model": name,
            "shapecalc_cpu_s": statistics.median(c.cpu for c in ours),
            "shapecalc_wall_s": statistics.median(c.wall for c in ours),
            "export_auto_cpu_s": statistics.median(c.cpu for c, _ in auto),
            "export_auto_wall_s": statistics.median(c.wall for c, _ in auto),
            "export_auto": auto[0][1],
            "export_named_cpu_s": named_clock.cpu,
            "export_named": named_status,
        }
        row["ratio_cpu"] = row["export_auto_cpu_s"] / row["shapecalc_cpu_s"]
        row["ratio_wall"] = row["export_auto_wall_s"] / row["shapecalc_wall_s"]
        rows.append(row)
        print(f"{name:20s} shapecalc {row['shapecalc_cpu_s']:5.2f} s cpu ({row['shapecalc_wall_s']:5.2f} wall) | "
              f"export Dim.AUTO {row['export_auto_cpu_s']:5.2f} s cpu ({row['export_auto_wall_s']:5.2f} wall) "
              f"{row['export_auto']} | ratio {row['ratio_cpu']:5.1f}x cpu, {row['ratio_wall']:5.1f}x wall | "
              f"named Dim: {named_status}", flush=True)
    return rows


def depth_scaling(depths: list[int], repeat: int) -> list[dict]:
    rows = []
    for depth in depths:
        # the fastest of the repeats: the figure least disturbed by other load
        seconds = min(time_shapecalc(f"conv-{depth}").cpu for _ in range(repeat))
        rows.append({"depth": depth, "seconds": seconds, "ms_per_layer": 1000 * seconds / depth})
        print(f"depth {depth:4d}: {seconds:6.3f} s cpu ({1000 * seconds / depth:5.2f} ms per conv)", flush=True)
    # least-squares line through the points: linear growth leaves small residuals
    xs, ys = [r["depth"] for r in rows], [r["seconds"] for r in rows]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    worst = max(abs(y - (my + slope * (x - mx))) / y for x, y in zip(xs, ys))
    print(f"linear fit: {1000 * slope:.2f} ms per conv, worst relative residual {100 * worst:.0f}%", flush=True)
    return rows


def cold_start(runs: int) -> dict:
    import resource

    commands = {
        "import torch": [sys.executable, "-c", "import torch"],
        "shapecalc trace fcn8s --input H": [sys.executable, "-m", "shapecalc", "trace", "fcn8s", "--input", "H"],
    }
    wall: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(runs):  # alternate, so a busy moment hits both
        for label, command in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            wall[label].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[label].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    result = {}
    for kind, times in (("cpu", cpu), ("wall", wall)):
        medians = {k: statistics.median(v) for k, v in times.items()}
        ratio = medians["shapecalc trace fcn8s --input H"] / medians["import torch"]
        for label, value in medians.items():
            print(f"{label:34s} {kind:4s} median {value:5.2f} s over {runs} runs (min {min(times[label]):.2f} s)",
                  flush=True)
        print(f"cold-start ratio ({kind}): {ratio:.2f}x the torch import (target <= 1.5x)", flush=True)
        result[kind] = {"medians": medians, "runs": times, "ratio": ratio}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median; default 3)")
    parser.add_argument("--quick", action="store_true", help="fewer models and depths (a smoke run)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}", flush=True)
    import torch

    print(f"torch {torch.__version__}", flush=True)
    warm = warm_up()
    print(f"warm-up (imports, first call): shapecalc {warm['shapecalc']:.2f} s, torch.export {warm['export']:.2f} s",
          flush=True)
    models = ["fcn8s", "deeplabv3-resnet18"] if args.quick else \
        ["fcn8s", "deeplabv3-resnet18", "deeplabv3-resnet101", "conv-200"]
    rows = compare(models, args.repeat)
    depths = [25, 50, 100] if args.quick else [25, 50, 100, 200, 400]
    scaling = depth_scaling(depths, args.repeat)
    cold = cold_start(3 if args.quick else 7)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine(), "torch": torch.__version__, "warm_up": warm, "models": rows,
                       "depth": scaling, "cold_start": cold}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
