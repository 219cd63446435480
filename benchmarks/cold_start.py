"""Cold start: ``shapecalc trace fcn8s --input H`` against ``python -c "import torch"``.

    python benchmarks/cold_start.py [--pairs 5] [--command "trace fcn8s --input H"]

Fresh processes, in pairs (torch, then shapecalc), so a busy moment hits both;
medians over the pairs of whole-process wall time and of CPU time (user + sys
of the child), which other load on a shared machine stretches far less.  The
target (issue 11) is a ratio of at most 1.3x in wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time


def measure(command: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--command", default="trace fcn8s --input H", help="shapecalc arguments")
    args = parser.parse_args(argv)
    # the console script, as a person runs it; python -m shapecalc where it is not installed
    script = shutil.which("shapecalc", path=os.path.dirname(sys.executable))
    ours = [script] if script else [sys.executable, "-m", "shapecalc"]
    commands = {"import torch": [sys.executable, "-c", "import torch"],
                f"shapecalc {args.command}": ours + shlex.split(args.command)}
    times = {label: [] for label in commands}
    for _ in range(args.pairs):
        for label, command in commands.items():
            times[label].append(measure(command))
    load = os.getloadavg()[0]
    print(f"{args.pairs} pairs, load average {load:.1f} on {os.cpu_count()} cores")
    medians = {}
    for label, runs in times.items():
        wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        medians[label] = (wall, cpu)
        print(f"{label:40s} wall median {wall:5.2f} s (min {min(w for w, _ in runs):.2f}), "
              f"cpu median {cpu:5.2f} s (min {min(c for _, c in runs):.2f})")
    (torch_wall, torch_cpu), (our_wall, our_cpu) = medians.values()
    print(f"ratio: wall {our_wall / torch_wall:.2f}x, cpu {our_cpu / torch_cpu:.2f}x (target <= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
