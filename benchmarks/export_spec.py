"""Measure ``shapecalc export-spec`` against ``Dim.AUTO`` on bundled and third-party models.

For each model: does torch.export accept the spec shapecalc builds from the
exact domain, how many of the valid sizes in 1..MAX it admits (range
constraints and the exported program's own guard checks), and what a plain
``Dim.AUTO`` export claims (its range_constraints) and really admits (its
guard checks).  Needs the [zoo] extra for the third-party models.

    python benchmarks/export_spec.py [--max 1024] > table.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

MODELS = [
    ("fcn8s", "fcn8s", {"width": 0.125}),
    ("deeplabv3", "deeplabv3", {"width": 0.125}),
    ("timm resnet18", "timm:create_model", {"model_name": "resnet18", "pretrained": False}),
    ("timm resnet10t", "timm:create_model", {"model_name": "resnet10t", "pretrained": False}),
    ("timm convnext_atto", "timm:create_model", {"model_name": "convnext_atto", "pretrained": False}),
    ("timm dla34", "timm:create_model", {"model_name": "dla34", "pretrained": False}),
    ("smp Unet-resnet18", "segmentation_models_pytorch:Unet",
     {"encoder_name": "resnet18", "encoder_weights": None, "encoder_depth": 3, "decoder_channels": (32, 16, 8)}),
    ("smp Unet-mobilenet_v2", "segmentation_models_pytorch:Unet",
     {"encoder_name": "mobilenet_v2", "encoder_weights": None, "encoder_depth": 3, "decoder_channels": (32, 16, 8)}),
    ("monai UNet", "monai.networks.nets:UNet",
     {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": (4, 8, 16), "strides": (2, 2)}),
    ("monai SegResNet", "monai.networks.nets:SegResNet",
     {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "init_filters": 8, "blocks_down": (1, 1, 1),
      "blocks_up": (1, 1)}),
    ("monai DynUNet", "monai.networks.nets:DynUNet",
     {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3], "strides": [1, 2, 2],
      "upsample_kernel_size": [2, 2], "filters": [8, 16, 32]}),
    ("torchvision resnet18", "torchvision.models:resnet18", {"weights": None}),
    ("torchvision mobilenet_v3_small", "torchvision.models:mobilenet_v3_small", {"weights": None}),
    ("torchvision squeezenet1_1", "torchvision.models:squeezenet1_1", {"weights": None}),
    ("torchvision lraspp_mobilenet_v3_large", "torchvision.models.segmentation:lraspp_mobilenet_v3_large",
     {"weights": None, "weights_backbone": None}),
]


def _auto(model, result, torch):
    """What a plain Dim.AUTO export claims (range constraints) and admits (its guard checks) per symbol."""
    from shapecalc.answers.export_spec import _guard_function, _SIZE_ACCESS

    per_axis = {axis: torch.export.Dim.AUTO for axis in result.axes}
    shapes = {result.argument: per_axis} if result.argument else (per_axis,)
    x = torch.empty(result.example_shape, device=result.device)
    try:
        ep = torch.export.export(model, (x,), dynamic_shapes=shapes, strict=False)
    except Exception as error:
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"}
    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name in set(ep.graph_signature.user_inputs))
    shape = placeholder.meta["val"].shape
    out = {}
    for symbol in result.specs:
        axis = next(a for a, s in result.axes.items() if s == symbol)
        dim = shape[axis]
        if not hasattr(dim, "node"):
            out[symbol] = {"claim": f"specialised to {int(dim)}", "admits": [int(dim)] if int(dim) in result.valid[symbol] else []}
            continue
        vr = ep.range_constraints[dim.node.expr]
        admits = [n for n in result.valid[symbol] if vr.lower <= n <= vr.upper]
        sizes = dict(enumerate(result.example_shape))
        for guard in getattr(ep, "_guards_code", None) or []:
            holds = _guard_function(guard)
            if holds is None or axis not in {int(m.group(2)) for m in _SIZE_ACCESS.finditer(guard)}:
                continue
            admits = [n for n in admits if holds({**sizes, axis: n}) is not False]
        out[symbol] = {"claim": f"[{vr.lower}, {vr.upper}]", "admits": admits}
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max", type=int, default=1024)
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    import torch

    import zoo_setup
    try:
        zoo_setup.import_zoo()
    except ImportError as error:
        print(f"zoo extra missing ({error}): third-party models skipped", file=sys.stderr)
    from shapecalc import export_spec
    from shapecalc import load_model
    from shapecalc.answers.export_spec import _progression_text, _runs

    print(f"| model | valid H in 1..{args.max} | shapecalc spec (H) | accepted | covers H | Dim.AUTO claims H | "
          "Dim.AUTO admits H | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for label, spec, kwargs in MODELS:
        if args.only and args.only not in label:
            continue
        start = time.perf_counter()
        try:
            model = load_model(spec, kwargs)
            result = export_spec(model, "HxW", max_size=args.max, name=label)
        except Exception as error:
            print(f"| {label} | error: {type(error).__name__}: {str(error)[:80]} |||||||")
            continue
        auto = _auto(model, result, torch) if result.specs else {"error": result.error}
        seconds = time.perf_counter() - start
        valid, covers = result.valid["H"], result.covers["H"]
        h_spec = result.specs["H"].python(set(result.specs)) if "H" in result.specs else "-"
        if "error" in auto:
            claim = admits = auto["error"]
        else:
            claim = auto["H"]["claim"]
            n = len(auto["H"]["admits"])
            admits = f"{n} ({n / len(valid):.1%})" + (f": {_progression_text('H', auto['H']['admits'])}" if n else "")
        print(f"| {label} | {len(valid)}: {_progression_text('H', valid)} | `{h_spec}` | "
              f"{'yes' if result.verified else 'no: ' + str(result.error)[:60]} | "
              f"{len(covers)} ({len(covers) / len(valid):.1%}) | {claim} | {admits} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
