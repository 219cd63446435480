"""Importing the third-party model libraries of the ``[zoo]`` extra.

timm and segmentation-models-pytorch import torchvision.  The torchvision
wheel that matches torch 2.13 on the package index is a CUDA build: its
compiled ops (``torchvision/_C.so``) do not load with CPU torch, and
``import torchvision`` then fails while registering a fake kernel for
``torchvision::nms``, an op that was never defined.  No model here calls a
torchvision op (they are detection ops: nms, roi_align, deform_conv2d), so
the two schemas that import needs are defined and the import retried; where
torchvision's own ops load, nothing is defined.
"""

from __future__ import annotations

import importlib
import sys

#: the schemas torchvision's Python side registers fake kernels for at import
#: (torchvision/_meta_registrations.py); the other ops are skipped there when
#: the compiled library is missing
TORCHVISION_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
}

#: why torchvision's compiled ops are missing, when they are (printed by the tests)
torchvision_note = ""


def import_torchvision():
    """``import torchvision``, defining the missing op schemas if its compiled ops do not load."""
    global torchvision_note
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        first_error = str(error).strip().splitlines()[-1]
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    for qualname, schema in TORCHVISION_SCHEMAS.items():
        torch.library.define(qualname, schema)
    torchvision = importlib.import_module("torchvision")
    torchvision_note = (f"torchvision {torchvision.__version__}: its compiled ops do not load with torch "
                        f"{torch.__version__} ({first_error}); defined {', '.join(TORCHVISION_SCHEMAS)} "
                        "so that it imports (no model here calls a torchvision op)")
    return torchvision


def import_zoo():
    """(timm, segmentation_models_pytorch, monai, torchvision.models), or ImportError."""
    torchvision = import_torchvision()
    import monai
    import segmentation_models_pytorch
    import timm
    import torchvision.models  # noqa: F401

    return timm, segmentation_models_pytorch, monai, torchvision.models


def require_zoo():
    """:func:`import_zoo`, or skip the calling test saying why (the ``[zoo]`` extra is optional)."""
    import pytest

    try:
        return import_zoo()
    except ImportError as error:
        pytest.skip(f"zoo extra not installed ({error}); pip install -e '.[zoo]'")


def require_torchvision():
    """:func:`import_torchvision`, or skip the calling test saying why."""
    import pytest

    try:
        return import_torchvision()
    except ImportError as error:
        pytest.skip(f"torchvision not installed ({error})")


def small_monai_unet():
    """MONAI's 2-D UNet, thin (channels 4, 8, 16; two stride-2 stages), on
    meta: it runs for two residues of H mod 4.  Skips the calling test, saying
    why, when the ``[zoo]`` extra is not installed."""
    monai = require_zoo()[2]
    return monai.networks.nets.UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16),
                                    strides=(2, 2)).eval().to("meta")
