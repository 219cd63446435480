"""Shared building blocks for the bundled segmentation models.

Everything here is written from scratch (no torchvision).  The helpers fall
into three groups:

* channel scaling (:func:`scaled`) so that the models can be made "thin" for
  fast tests,
* cheap construction / initialisation (:func:`build_cheaply`), which skips
  PyTorch's default per-layer initialisation (seconds for the 10^8-parameter
  FCN head) and works unchanged under ``with torch.device("meta"):``,
* a ResNet trunk (:class:`ResNetTrunk`) with the torchvision module layout and
  torchvision's ``replace_stride_with_dilation`` semantics.
"""

from __future__ import annotations

import operator
from typing import Callable, Sequence, TypeVar

import torch
import torch.nn as nn

__all__ = [
    "scaled",
    "check_width",
    "check_n_class",
    "build_cheaply",
    "bilinear_kernel_",
    "dirac_",
    "BasicBlock",
    "Bottleneck",
    "ResNetTrunk",
    "RESNET_SPECS",
]

M = TypeVar("M", bound=nn.Module)


# --------------------------------------------------------------------------
# channel scaling
# --------------------------------------------------------------------------
def scaled(channels: int, width: float) -> int:
    """``max(1, round(channels * width))`` -- the thinned channel count."""
    return max(1, int(round(channels * width)))


def check_width(width: float) -> float:
    try:
        w = float(width)
    except (TypeError, ValueError):
        w = float("nan")
    if isinstance(width, bool) or not (0 < w < float("inf")):
        raise ValueError(f"width must be a positive finite number, got {width!r}")
    return w


def check_n_class(n_class: int) -> int:
    try:
        n = operator.index(n_class)
    except TypeError:
        n = 0
    if isinstance(n_class, bool) or n < 1:
        raise ValueError(f"n_class must be a positive int, got {n_class!r}")
    return n


# --------------------------------------------------------------------------
# cheap construction / initialisation
# --------------------------------------------------------------------------
def build_cheaply(ctor: Callable[[], M], init: Callable[[M], None]) -> M:
    """Construct ``ctor()`` without PyTorch's default initialisation.

    The module is first built on the meta device (no storage, no RNG work),
    then materialised with uninitialised storage on the current default
    device (``torch.get_default_device()``, so ``with torch.device(...)``
    contexts are honoured) and finally initialised once by ``init``.

    If the default device is ``meta`` nothing is ever allocated and ``init``
    is skipped.  ``init`` must (re)set *every* parameter and buffer, since
    :meth:`torch.nn.Module.to_empty` leaves garbage in them.
    """
    target = torch.get_default_device()
    with torch.device("meta"):
        module = ctor()
    if target.type == "meta":
        return module
    module = module.to_empty(device=target)
    with torch.no_grad():
        init(module)
    return module


def init_batchnorm_(module: nn.Module) -> None:
    """Reset weight=1, bias=0, running stats (mean 0, var 1, count 0)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


def kaiming_conv_(conv: nn.Conv2d) -> None:
    """He-normal (fan_out, relu) weights, zero bias -- the usual CNN init."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def bilinear_kernel_(weight: torch.Tensor) -> torch.Tensor:
    """Fill a ``ConvTranspose2d`` weight ``(in, out, k, k)`` with a bilinear
    upsampling filter on the channel diagonal (zeros elsewhere).

    With ``stride = k // 2`` this is exact bilinear interpolation in the
    interior, the classic FCN initialisation of its deconvolution layers.
    """
    c_in, c_out, kh, kw = weight.shape
    weight.zero_()

    def tent(k: int) -> torch.Tensor:
        factor = (k + 1) // 2
        centre = factor - 1 if k % 2 == 1 else factor - 0.5
        pos = torch.arange(k, dtype=weight.dtype, device=weight.device)
        return 1 - (pos - centre).abs() / factor

    filt = tent(kh)[:, None] * tent(kw)[None, :]
    n = min(c_in, c_out)
    idx = torch.arange(n, device=weight.device)
    weight[idx, idx] = filt
    return weight


def dirac_(weight: torch.Tensor) -> torch.Tensor:
    """Identity-like conv weight ``(out, in, kh, kw)``: output channel ``o``
    copies input channel ``o % in`` at the kernel centre.

    Used for FCN's huge fc6/fc7 layers, where drawing ~1.2e8 random numbers
    would dominate construction time; unlike an all-zero init it keeps the
    network's output non-degenerate.
    """
    c_out, c_in, kh, kw = weight.shape
    weight.zero_()
    o = torch.arange(c_out, device=weight.device)
    weight[o, o % c_in, kh // 2, kw // 2] = 1.0
    return weight


# --------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------
def conv3x3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding == dilation keeps the spatial size at stride 1
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs).

    Unlike torchvision's (which raises for ``dilation > 1``), both 3x3 convs
    use ``dilation`` so the block can sit in a dilated stage.
    """

    expansion = 1

    def __init__(self, c_in: int, mid: int, c_out: int, stride: int = 1,
                 dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        if mid != c_out:
            raise ValueError("BasicBlock needs mid == c_out")
        self.conv1 = conv3x3(c_in, c_out, stride, dilation)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c_out, c_out, 1, dilation)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:  # structural, not data-dependent
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (carries stride and dilation) ->
    1x1, expansion 4."""

    expansion = 4

    def __init__(self, c_in: int, mid: int, c_out: int, stride: int = 1,
                 dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(c_in, mid)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, stride, dilation)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, c_out)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


# name -> (block class, blocks per stage)
RESNET_SPECS: dict[str, tuple[type, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNetTrunk(nn.Module):
    """ResNet without avgpool/fc, torchvision attribute layout:
    ``conv1, bn1, relu, maxpool, layer1 .. layer4``.

    ``replace_stride_with_dilation[i]`` turns the stride-2 of ``layer{i+2}``
    into dilation, exactly as torchvision does: the stage's dilation becomes
    ``previous * 2``, its first block keeps the *previous* dilation and all
    later blocks use the new one.  ``out_channels`` is the channel count of
    ``layer4``'s output.
    """

    def __init__(self, block: type, layers: Sequence[int], width: float = 1.0,
                 replace_stride_with_dilation: Sequence[bool] = (False, False, False)):
        super().__init__()
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation needs 3 entries")
        self.block = block
        self.width = width
        self.dilation = 1
        self.inplanes = scaled(64, width)
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        r = replace_stride_with_dilation
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2, dilate=r[0])
        self.layer3 = self._make_layer(256, layers[2], stride=2, dilate=r[1])
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=r[2])
        self.out_channels = self.inplanes

    def _make_layer(self, planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        block = self.block
        mid = scaled(planes, self.width)
        c_out = scaled(planes * block.expansion, self.width)
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != c_out:
            downsample = nn.Sequential(conv1x1(self.inplanes, c_out, stride),
                                       nn.BatchNorm2d(c_out))
        layers = [block(self.inplanes, mid, c_out, stride, previous_dilation, downsample)]
        self.inplanes = c_out
        for _ in range(1, blocks):
            layers.append(block(c_out, mid, c_out, 1, self.dilation))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return x


def init_resnet_(trunk: nn.Module) -> None:
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            kaiming_conv_(m)
    init_batchnorm_(trunk)
