"""DeepLab-v3 (Chen et al., 2017): dilated ResNet trunk + ASPP head.

Written from scratch; no pretrained weights are provided.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._blocks import (RESNET_SPECS, ResNetTrunk, build_cheaply, check_n_class, check_width,
                      init_batchnorm_, kaiming_conv_, scaled)

__all__ = ["ASPP", "ASPPPooling", "DeepLabV3", "deeplabv3", "OUTPUT_STRIDES"]

# output stride -> (replace_stride_with_dilation for layer2..4, ASPP rates)
OUTPUT_STRIDES: dict[int, tuple[tuple[bool, bool, bool], tuple[int, int, int]]] = {
    16: ((False, False, True), (6, 12, 18)),
    8: ((False, True, True), (12, 24, 36)),
}


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation if kernel == 3 else 0
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Module):
    """Image-level pooling branch: global average pool, 1x1 conv + BN + ReLU,
    bilinear upsample back to the input's spatial size.

    Note: in training mode BatchNorm on the pooled 1x1 map needs batch > 1.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        h = self.relu(self.bn(self.conv(self.pool(x))))
        return F.interpolate(h, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 branch, three dilated 3x3 branches,
    image pooling, concatenation, 1x1 projection (+BN, ReLU, Dropout(0.5))."""

    def __init__(self, c_in: int, rates: tuple[int, int, int], c_out: int = 256):
        super().__init__()
        r1, r2, r3 = rates
        self.rates = tuple(rates)
        self.b0 = _conv_bn_relu(c_in, c_out, 1)
        self.b1 = _conv_bn_relu(c_in, c_out, 3, r1)
        self.b2 = _conv_bn_relu(c_in, c_out, 3, r2)
        self.b3 = _conv_bn_relu(c_in, c_out, 3, r3)
        self.pooling = ASPPPooling(c_in, c_out)
        self.project = nn.Sequential(
            nn.Conv2d(5 * c_out, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res0 = self.b0(x)
        res1 = self.b1(x)
        res2 = self.b2(x)
        res3 = self.b3(x)
        res4 = self.pooling(x)
        h = torch.cat([res0, res1, res2, res3, res4], dim=1)
        return self.project(h)


class DeepLabV3(nn.Module):
    """``backbone`` (ResNet trunk) -> ``aspp`` -> ``classifier`` (1x1 conv)
    -> bilinear upsample to the input size."""

    def __init__(self, n_class: int = 21, backbone: str = "resnet18", output_stride: int = 16,
                 width: float = 1.0, align_corners: bool = False):
        super().__init__()
        block, layers = RESNET_SPECS[backbone]
        dilate, rates = OUTPUT_STRIDES[output_stride]
        self.n_class = n_class
        self.output_stride = output_stride
        self.align_corners = bool(align_corners)
        self.backbone = ResNetTrunk(block, layers, width, dilate)
        c_aspp = scaled(256, width)
        self.aspp = ASPP(self.backbone.out_channels, rates, c_aspp)
        self.classifier = nn.Conv2d(c_aspp, n_class, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        h = self.backbone(x)
        h = self.aspp(h)
        h = self.classifier(h)
        return F.interpolate(h, size=size, mode="bilinear", align_corners=self.align_corners)


def _init_deeplabv3(model: DeepLabV3) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kaiming_conv_(m)
    init_batchnorm_(model)


def deeplabv3(n_class: int = 21, backbone: str = "resnet18", output_stride: int = 16,
              width: float = 1.0, *, align_corners: bool = False) -> DeepLabV3:
    """Build DeepLab-v3 with a from-scratch ResNet trunk.

    ``backbone``: one of ``resnet18``, ``resnet34`` (BasicBlock) or
    ``resnet50``, ``resnet101`` (Bottleneck).  ``output_stride`` 16 dilates
    layer4 (ASPP rates 6/12/18); 8 dilates layer3 and layer4 (rates
    12/24/36).  The trunk output (ASPP input) is ``ceil(H / output_stride)``
    by ``ceil(W / output_stride)``.  ``width`` scales every channel count
    except the 3 input channels and ``n_class``.  ``align_corners`` only
    affects the final upsample to the input size (the ASPP pooling branch
    always uses ``align_corners=False``).

    Weights are random (He-normal convs, unit BN), not pretrained.  Built on
    the default device; under ``with torch.device("meta"):`` nothing is
    allocated.

    The module is returned as constructed, i.e. in **training** mode; call
    ``.eval()`` for inference (in training mode the image-pooling BatchNorm
    needs a batch larger than 1).
    """
    if backbone not in RESNET_SPECS:
        raise ValueError(f"unknown backbone {backbone!r}; valid choices: {sorted(RESNET_SPECS)}")
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"unsupported output_stride {output_stride!r}; "
                         f"valid choices: {sorted(OUTPUT_STRIDES)}")
    n_class = check_n_class(n_class)
    width = check_width(width)
    return build_cheaply(
        lambda: DeepLabV3(n_class, backbone, int(output_stride), width, align_corners),
        _init_deeplabv3,
    )
