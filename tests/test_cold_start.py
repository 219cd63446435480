"""What a fresh ``shapecalc`` process loads: bad input is refused before torch
is imported, and the trace check's meta forward passes do not import
torch._dynamo (about 1.5 s, as much as torch itself).  Speed itself is
measured in benchmarks/cold_start.py, not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

#: every command's bad-input path that needs no model: each must fail with exit 2
BAD_INPUTS = [
    ["trace", "fcn8s", "--input", "3y"],
    ["trace", "fcn8s", "--input", "Hx"],
    ["trace", "fcn8s", "--input", "H", "--arg", "=3"],
    ["trace", "fcn8s", "--input", "H", "--channels", "0"],
    ["cost", "fcn8s", "--input", "0"],
    ["check", "fcn8s", "--input", "H", "--expect-output", "3y"],
    ["check", "fcn8s", "--input", "H,,W"],
    ["verify", "fcn8s", "--input", "3y"],
    ["docs", "--input", "3y"],
    ["docs", "--sizes", "x"],
    ["sizes", "fcn8s", "--input", "3y"],
]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_bad_input_is_refused_before_torch_is_imported():
    # one process for all cases (each fails before loading anything heavy);
    # a command that imported torch on the way would leave it in sys.modules
    done = _run(f"""
        import contextlib, io, json, sys
        from shapecalc.cli import main
        results = []
        for argv in {BAD_INPUTS!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as exit:
                    code = exit.code
            results.append([argv, code, err.getvalue(), "torch" in sys.modules])
        print(json.dumps(results))
    """)
    assert done.returncode == 0, done.stderr
    for argv, code, stderr, torch_loaded in json.loads(done.stdout):
        assert code == 2, (argv, code, stderr)
        assert len(stderr.strip().splitlines()) == 1 and "error" in stderr and "Traceback" not in stderr, (argv, stderr)
        assert not torch_loaded, f"{' '.join(argv)} imported torch before refusing its input"


def test_trace_check_runs_on_meta_without_importing_dynamo():
    done = _run("""
        import gc, sys, types
        import torch, torch.nn as nn, torch.nn.functional as F
        from shapecalc.capture.trace import trace_module

        class Net(nn.Module):  # add, relu, interpolate, cat: Python reference kernels on meta
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
            def forward(self, x):
                y = F.relu(self.conv(x) + 1)
                y = F.interpolate(y, scale_factor=2, mode="bilinear")
                return torch.cat([y, y], 1)

        with torch.device("meta"):
            net = Net().eval()
        graph = trace_module(net)
        dynamo_loaded = "torch._dynamo" in sys.modules or "_dynamo" in vars(torch)
        # the stand-in left nothing behind: no kernel keeps itself as its "disabled" form
        leftovers = [f for f in gc.get_objects() if type(f) is types.FunctionType
                     and f.__dict__.get("__dynamo_disable") is f]
        # the real torch._dynamo, loaded afterwards, wraps the kernels as usual
        import torch._dynamo
        x = torch.empty(1, 3, 8, 8, device="meta")
        shape = tuple((x + x).shape)
        wrapped = [f for f in gc.get_objects() if type(f) is types.FunctionType and "__dynamo_disable" in f.__dict__]
        print(dynamo_loaded, len(leftovers), shape, len(wrapped) > 0, sys.modules["torch._dynamo"] is torch._dynamo)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "0", "(1,", "3,", "8,", "8)", "True", "True"]


def test_model_code_that_asks_dynamo_during_the_check_gets_the_real_module():
    done = _run("""
        import sys
        import torch, torch.nn as nn
        from shapecalc.capture.trace import trace_module

        class Asks(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
            def forward(self, x):
                y = self.conv(x) + 1
                # timm and transformers ask this; only at run time here, so that
                # the check (not the tracer) is the first to touch torch._dynamo
                if not isinstance(x, torch.fx.Proxy) and torch._dynamo.is_compiling():
                    y = y * 2
                return y

        with torch.device("meta"):
            net = Asks().eval()
        before = "torch._dynamo" in sys.modules
        graph = trace_module(net)
        print(before, type(sys.modules["torch._dynamo"]).__name__, hasattr(torch._dynamo, "optimize"))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "module", "True"]


def test_only_a_whole_process_run_freezes_the_garbage_collector():
    # main() as the console script calls it (argv from sys.argv) freezes the
    # objects it loaded; a program calling main(argv) keeps its collector as it was
    done = _run("""
        import contextlib, gc, io, sys
        from shapecalc.cli import main
        with contextlib.redirect_stderr(io.StringIO()):
            code = main(["trace", "fcn8s", "--input", "3y"])
            print(code, gc.get_freeze_count())
            sys.argv = ["shapecalc", "trace", "fcn8s", "--input", "3y"]
            code = main()
        print(code, gc.get_freeze_count() > 0)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "0", "2", "True"]
