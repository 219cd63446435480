"""FCN-8s (Long, Shelhamer & Darrell), laid out as the Caffe reference
``voc-fcn8s`` net: VGG-16 with ``pad: 100`` on the first conv, ceil-mode
pooling, fc6/fc7 as convolutions, three skip scores and the fixed crop
offsets 5 / 9 / 31.

Written from scratch; no pretrained weights are provided.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._blocks import (bilinear_kernel_, build_cheaply, check_n_class, check_width, dirac_,
                      kaiming_conv_, scaled)

__all__ = ["FCN8s", "fcn8s"]


class FCN8s(nn.Module):
    """FCN-8s.  Output has the input's spatial size (for every H, W >= 1).

    The forward pass is straight-line code, so ``torch.fx.symbolic_trace``
    gives a graph whose nodes carry the Caffe layer names.
    """

    def __init__(self, n_class: int = 21, width: float = 1.0):
        super().__init__()
        c1, c2, c3, c4, c5 = (scaled(c, width) for c in (64, 128, 256, 512, 512))
        cf = scaled(4096, width)
        self.n_class = n_class
        self.width = width

        def pool() -> nn.MaxPool2d:
            return nn.MaxPool2d(2, stride=2, ceil_mode=True)

        # conv1 -- 1/2
        self.conv1_1 = nn.Conv2d(3, c1, 3, padding=100)
        self.relu1_1 = nn.ReLU(inplace=True)
        self.conv1_2 = nn.Conv2d(c1, c1, 3, padding=1)
        self.relu1_2 = nn.ReLU(inplace=True)
        self.pool1 = pool()
        # conv2 -- 1/4
        self.conv2_1 = nn.Conv2d(c1, c2, 3, padding=1)
        self.relu2_1 = nn.ReLU(inplace=True)
        self.conv2_2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.relu2_2 = nn.ReLU(inplace=True)
        self.pool2 = pool()
        # conv3 -- 1/8
        self.conv3_1 = nn.Conv2d(c2, c3, 3, padding=1)
        self.relu3_1 = nn.ReLU(inplace=True)
        self.conv3_2 = nn.Conv2d(c3, c3, 3, padding=1)
        self.relu3_2 = nn.ReLU(inplace=True)
        self.conv3_3 = nn.Conv2d(c3, c3, 3, padding=1)
        self.relu3_3 = nn.ReLU(inplace=True)
        self.pool3 = pool()
        # conv4 -- 1/16
        self.conv4_1 = nn.Conv2d(c3, c4, 3, padding=1)
        self.relu4_1 = nn.ReLU(inplace=True)
        self.conv4_2 = nn.Conv2d(c4, c4, 3, padding=1)
        self.relu4_2 = nn.ReLU(inplace=True)
        self.conv4_3 = nn.Conv2d(c4, c4, 3, padding=1)
        self.relu4_3 = nn.ReLU(inplace=True)
        self.pool4 = pool()
        # conv5 -- 1/32
        self.conv5_1 = nn.Conv2d(c4, c5, 3, padding=1)
        self.relu5_1 = nn.ReLU(inplace=True)
        self.conv5_2 = nn.Conv2d(c5, c5, 3, padding=1)
        self.relu5_2 = nn.ReLU(inplace=True)
        self.conv5_3 = nn.Conv2d(c5, c5, 3, padding=1)
        self.relu5_3 = nn.ReLU(inplace=True)
        self.pool5 = pool()
        # fc6 / fc7 as convolutions
        self.fc6 = nn.Conv2d(c5, cf, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d()
        self.fc7 = nn.Conv2d(cf, cf, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d()
        # scores and upsampling
        self.score_fr = nn.Conv2d(cf, n_class, 1)
        self.score_pool3 = nn.Conv2d(c3, n_class, 1)
        self.score_pool4 = nn.Conv2d(c4, n_class, 1)
        self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        h = self.relu1_1(self.conv1_1(h))
        h = self.relu1_2(self.conv1_2(h))
        h = self.pool1(h)

        h = self.relu2_1(self.conv2_1(h))
        h = self.relu2_2(self.conv2_2(h))
        h = self.pool2(h)

        h = self.relu3_1(self.conv3_1(h))
        h = self.relu3_2(self.conv3_2(h))
        h = self.relu3_3(self.conv3_3(h))
        h = self.pool3(h)
        pool3 = h  # 1/8

        h = self.relu4_1(self.conv4_1(h))
        h = self.relu4_2(self.conv4_2(h))
        h = self.relu4_3(self.conv4_3(h))
        h = self.pool4(h)
        pool4 = h  # 1/16

        h = self.relu5_1(self.conv5_1(h))
        h = self.relu5_2(self.conv5_2(h))
        h = self.relu5_3(self.conv5_3(h))
        h = self.pool5(h)

        h = self.relu6(self.fc6(h))
        h = self.drop6(h)

        h = self.relu7(self.fc7(h))
        h = self.drop7(h)

        h = self.score_fr(h)
        h = self.upscore2(h)
        upscore2 = h  # 1/16

        h = self.score_pool4(pool4)
        h = h[:, :, 5:5 + upscore2.size()[2], 5:5 + upscore2.size()[3]]
        score_pool4c = h  # 1/16

        h = upscore2 + score_pool4c
        h = self.upscore_pool4(h)
        upscore_pool4 = h  # 1/8

        h = self.score_pool3(pool3)
        h = h[:, :, 9:9 + upscore_pool4.size()[2], 9:9 + upscore_pool4.size()[3]]
        score_pool3c = h  # 1/8

        h = upscore_pool4 + score_pool3c
        h = self.upscore8(h)
        h = h[:, :, 31:31 + x.size()[2], 31:31 + x.size()[3]]
        return h


def _init_fcn8s(model: FCN8s) -> None:
    for name, m in model.named_children():
        if isinstance(m, nn.ConvTranspose2d):
            bilinear_kernel_(m.weight)
        elif name in ("fc6", "fc7"):
            # ~1.2e8 weights at full width: a deterministic identity-like
            # init costs a memset instead of seconds of RNG.
            dirac_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            kaiming_conv_(m)


def fcn8s(n_class: int = 21, width: float = 1.0) -> FCN8s:
    """Build FCN-8s (Caffe ``voc-fcn8s`` layout) with ``n_class`` outputs.

    ``width`` scales every channel count (VGG stages and fc6/fc7) with
    ``max(1, round(c * width))``; the 3 input channels and ``n_class`` are
    never scaled.

    Weights are random-but-cheap, not pretrained: VGG convs and score layers
    He-normal, fc6/fc7 identity-like (Dirac), deconvolutions bilinear.  Built
    on the default device; under ``with torch.device("meta"):`` nothing is
    allocated.

    The module is returned as constructed, i.e. in **training** mode (dropout
    active); call ``.eval()`` for inference.
    """
    n_class = check_n_class(n_class)
    width = check_width(width)
    return build_cheaply(lambda: FCN8s(n_class, width), _init_fcn8s)
