"""The ATen front end against ``torch.export.export(strict=False, Dim.AUTO)``.

    python benchmarks/aten_capture.py [--rounds 3] [--models fcn8s,smp-FPN,...] [--markdown]

Per model, in one process and under the same load, one after the other,
each timed warm (a first untimed run of each pays the imports and caches):

* ``export``: ``torch.export.export(model, (x,), dynamic_shapes=Dim.AUTO on
  H and W, strict=False)``, the peer: one symbolic trace, no exploration and
  no domain (its range_constraints are intervals);
* ``aten first``: shapecalc's ATen capture at one size plus the sizing of its
  graph by shapecalc's rules (what export does, plus exact sizes and domain),
  ``analyze(capture="aten", max_captures=1)``;
* ``aten all``: the whole exploration (``analyze(capture="aten")``: every
  capture needed to map the regions of shape-dependent Python);
* ``fx``: shapecalc's torch.fx path, where it traces the model.

Medians over ``--rounds`` of wall time and of CPU time (``time.process_time``),
each run after a ``gc.collect()`` outside the clock.  Ratios are against
export measured in the same round.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # zoo_setup: torchvision's missing op schemas

#: name -> (MODEL spec, kwargs, input spec)
MODELS = {
    "fcn8s": ("fcn8s", {}, "HxW"),
    "deeplabv3": ("deeplabv3", {}, "HxW"),
    "smp-Unet": ("segmentation_models_pytorch:Unet", {"encoder_name": "resnet18", "encoder_weights": None}, "HxW"),
    "smp-FPN": ("segmentation_models_pytorch:FPN", {"encoder_name": "resnet18", "encoder_weights": None}, "HxW"),
    "smp-PSPNet": ("segmentation_models_pytorch:PSPNet", {"encoder_name": "resnet18", "encoder_weights": None},
                   "HxW"),
    "smp-Linknet": ("segmentation_models_pytorch:Linknet", {"encoder_name": "resnet18", "encoder_weights": None},
                    "HxW"),
    "timm-resnet18": ("timm:create_model", {"model_name": "resnet18", "pretrained": False}, "HxW"),
    "timm-efficientnet_b0": ("timm:create_model", {"model_name": "efficientnet_b0", "pretrained": False}, "HxW"),
    "timm-regnetx_002": ("timm:create_model", {"model_name": "regnetx_002", "pretrained": False}, "HxW"),
    "tv-resnet18": ("torchvision.models:resnet18", {"weights": None}, "HxW"),
    "tv-shufflenet_v2_x0_5": ("torchvision.models:shufflenet_v2_x0_5", {"weights": None}, "HxW"),
    "monai-UNet": ("monai.networks.nets:UNet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                                                "channels": (4, 8, 16), "strides": (2, 2)}, "HxW"),
}


def _timed(function):
    # the previous run's garbage (an export's graphs, a capture's fake tensors) is collected
    # before the clock starts, so no tool pays for another's
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _export(model, channels: int):
    import torch
    from torch.export import Dim
    x = torch.empty(1, channels, 224, 224, device="meta")
    return torch.export.export(model, (x,), dynamic_shapes={"x": {2: Dim.AUTO, 3: Dim.AUTO}}, strict=False) \
        if _forward_argument(model) == "x" else \
        torch.export.export(model, (x,), dynamic_shapes=({2: Dim.AUTO, 3: Dim.AUTO},), strict=False)


def _forward_argument(model) -> str:
    import inspect
    parameters = list(inspect.signature(model.forward).parameters)
    return parameters[0] if parameters else "x"


def measure(name: str, rounds: int) -> dict:
    import shapecalc
    from shapecalc.aten_analysis import model_channels
    spec, kwargs, input_spec = MODELS[name]
    model = shapecalc.load_model(spec, kwargs)
    channels = model_channels(model) or 3
    runs = {
        "export": lambda: _export(model, channels),
        "aten first": lambda: shapecalc.analyze(model, input_spec, capture="aten", max_captures=1),
        "aten all": lambda: shapecalc.analyze(model, input_spec, capture="aten"),
        "fx": lambda: shapecalc.analyze(model, input_spec, capture="fx"),
    }
    times: dict[str, list] = {key: [] for key in runs}
    failures: dict[str, str] = {}
    captures = None
    for round_number in range(rounds + 1):  # round 0 warms up and is not counted
        for key, run in runs.items():
            if key in failures:
                continue
            try:
                wall, cpu, result = _timed(run)
            except Exception as error:  # the peer or a front end cannot take this model: say which
                failures[key] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
                continue
            if key == "aten all":
                captures = len(result.pieces)
            if round_number:
                times[key].append((wall, cpu))
    row = {"model": name, "captures": captures, "failures": failures}
    for key, values in times.items():
        if values:
            row[key] = (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
    return row


def _cell(row, key):
    if key not in row:
        return "fails" if key in row["failures"] else "-"
    wall, cpu = row[key]
    return f"{wall:.2f} / {cpu:.2f}"


def _ratio(row, key):
    if key not in row or "export" not in row:
        return "-"
    return f"{row[key][0] / row['export'][0]:.2f}x / {row[key][1] / row['export'][1]:.2f}x"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import zoo_setup
    zoo_setup.import_zoo()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    print("| model | captures | export (wall / CPU s) | aten first | aten all | fx | aten first vs export | "
          "aten all vs export | fx vs export |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        print(f"measuring {name}", file=sys.stderr)
        row = measure(name, args.rounds)
        print(f"| {name} | {row['captures']} | {_cell(row, 'export')} | {_cell(row, 'aten first')} | "
              f"{_cell(row, 'aten all')} | {_cell(row, 'fx')} | {_ratio(row, 'aten first')} | "
              f"{_ratio(row, 'aten all')} | {_ratio(row, 'fx')} |", flush=True)
        for key, why in row["failures"].items():
            print(f"  {name}: {key} failed: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
