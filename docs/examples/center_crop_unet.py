"""A two-level U-Net as in Ronneberger et al. (2015): unpadded 3x3 convs,
2x2 max pools, 2x2 stride-2 up-convs, and skip connections centre-cropped
with offsets computed from the sizes in ``forward``.

It runs for many input sizes, but ``(X - h) // 2`` equals the offset the
geometry needs (4 and 16) only for some: shapecalc reports which.

    shapecalc trace docs/examples/center_crop_unet.py:CenterCropUNet --input H
"""

from __future__ import annotations

import torch
import torch.nn as nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_UP = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}


def _block(dims: int, c_in: int, c_out: int) -> nn.Sequential:
    conv = _CONV[dims]
    return nn.Sequential(conv(c_in, c_out, 3), nn.ReLU(), conv(c_out, c_out, 3), nn.ReLU())


def center_crop(skip: torch.Tensor, like: torch.Tensor, dims: int) -> torch.Tensor:
    """The middle of ``skip`` with the spatial size of ``like`` (the usual
    hand-written crop: half the size difference on each side)."""
    if dims == 1:
        d = (skip.size(2) - like.size(2)) // 2
        return skip[:, :, d:d + like.size(2)]
    dh = (skip.size(2) - like.size(2)) // 2
    dw = (skip.size(3) - like.size(3)) // 2
    return skip[:, :, dh:dh + like.size(2), dw:dw + like.size(3)]


class CenterCropUNet(nn.Module):
    def __init__(self, channels: int = 1, width: int = 8, n_class: int = 2, dims: int = 2):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        self.dims = dims
        self.enc1 = _block(dims, channels, width)
        self.pool1 = _POOL[dims](2)
        self.enc2 = _block(dims, width, 2 * width)
        self.pool2 = _POOL[dims](2)
        self.bottom = _block(dims, 2 * width, 4 * width)
        self.up2 = _UP[dims](4 * width, 2 * width, 2, stride=2)
        self.dec2 = _block(dims, 4 * width, 2 * width)
        self.up1 = _UP[dims](2 * width, width, 2, stride=2)
        self.dec1 = _block(dims, 2 * width, width)
        self.head = _CONV[dims](width, n_class, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        b = self.bottom(self.pool2(e2))
        u2 = self.up2(b)
        d2 = self.dec2(torch.cat([center_crop(e2, u2, self.dims), u2], dim=1))
        u1 = self.up1(d2)
        d1 = self.dec1(torch.cat([center_crop(e1, u1, self.dims), u1], dim=1))
        return self.head(d1)
