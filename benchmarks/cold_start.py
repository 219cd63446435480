"""Cold start: ``shapecalc trace fcn8s --input H`` against ``python -c "import torch"``.

    python benchmarks/cold_start.py [--pairs 5] [--command "trace fcn8s --input H"] [--no-compile]

Fresh processes, in rounds (each reference, then shapecalc), so a busy
moment hits all of them; medians over the rounds of whole-process wall time
and of CPU time (user + sys of the child), which other load on a shared
machine stretches far less.  The target (issue 11) is a ratio of at most
1.3x in wall time against ``import torch``.

Two more references say what that ratio is made of.  shapecalc's CLI calls
``gc.freeze()`` once torch is loaded, which also spares the interpreter's
exit collection a scan of torch's objects (about 0.3 s of ``import torch``
itself); ``import torch`` + ``gc.freeze()`` is torch with that saving.  And
torch computing one size on the meta device imports
``torch.fx.experimental.symbolic_shapes`` and with it all of sympy, which any
program that runs a meta forward pass pays, whatever it does itself.

Bytecode: ``pip install`` compiles a package's modules; an editable checkout
run with ``PYTHONDONTWRITEBYTECODE`` set (as here) never writes them, so each
run would compile shapecalc's ~45 modules from source (about 0.16 s) while
torch, sympy and rich load compiled ones.  By default the benchmark therefore
compiles shapecalc's and the bundled models' bytecode first (``compileall``,
into their ``__pycache__``, which git ignores), as an installed copy has it;
``--no-compile`` measures the checkout as it is.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time

#: torch computing one convolution's size on the meta device, nothing else
META_CONV = ("import gc, torch; torch.nn.functional.conv2d(torch.empty(1, 3, 8, 8, device='meta'), "
             "torch.empty(4, 3, 3, 3, device='meta')); gc.freeze()")


def measure(command: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def compile_bytecode(packages=("shapecalc", "segmodels")) -> None:
    """Each package's modules compiled, as ``pip install`` leaves them."""
    for name in packages:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(location, quiet=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="rounds (each runs every command once)")
    parser.add_argument("--command", default="trace fcn8s --input H", help="shapecalc arguments")
    parser.add_argument("--no-compile", action="store_true", help="do not compile shapecalc's bytecode first")
    args = parser.parse_args(argv)
    if not args.no_compile:
        compile_bytecode()
    # the console script, as a person runs it; python -m shapecalc where it is not installed
    script = shutil.which("shapecalc", path=os.path.dirname(sys.executable))
    ours = [script] if script else [sys.executable, "-m", "shapecalc"]
    commands = {"import torch": [sys.executable, "-c", "import torch"],
                "import torch + gc.freeze()": [sys.executable, "-c", "import gc, torch; gc.freeze()"],
                "+ one meta conv2d": [sys.executable, "-c", META_CONV],
                f"shapecalc {args.command}": ours + shlex.split(args.command)}
    times = {label: [] for label in commands}
    for _ in range(args.pairs):
        for label, command in commands.items():
            times[label].append(measure(command))
    load = os.getloadavg()[0]
    bytecode = "not compiled first" if args.no_compile else "compiled first"
    print(f"{args.pairs} rounds, load average {load:.1f} on {os.cpu_count()} cores, shapecalc's bytecode {bytecode}")
    medians = {}
    for label, runs in times.items():
        wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        medians[label] = (wall, cpu)
        print(f"{label:40s} wall median {wall:5.2f} s (min {min(w for w, _ in runs):.2f}), "
              f"cpu median {cpu:5.2f} s (min {min(c for _, c in runs):.2f})")
    (torch_wall, torch_cpu), *references, (our_wall, our_cpu) = medians.values()
    print(f"ratio to import torch: wall {our_wall / torch_wall:.2f}x, cpu {our_cpu / torch_cpu:.2f}x (target <= 1.3x)")
    for label, (wall, cpu) in zip(list(commands)[1:], references):
        print(f"ratio to {label}: wall {our_wall / wall:.2f}x, cpu {our_cpu / cpu:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
