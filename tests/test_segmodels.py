"""Tests for the bundled segmentation models (thin widths, CPU, fast)."""

import math

import pytest
import torch
import torch.fx
import torch.nn as nn

from segmodels import BUNDLED_MODELS, deeplabv3, fcn8s
from segmodels._blocks import scaled

THIN = 1 / 16
THINNER = 1 / 32


@pytest.fixture(scope="module")
def fcn_thin():
    torch.manual_seed(0)
    return fcn8s(n_class=5, width=THINNER).eval()


@pytest.fixture(scope="module")
def dl_thin():
    torch.manual_seed(0)
    return deeplabv3(n_class=4, width=THIN).eval()


def _layer4_hw(model, x):
    seen = {}

    def hook(_mod, _inp, out):
        seen["shape"] = tuple(out.shape)

    handle = model.backbone.layer4.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        handle.remove()
    return seen["shape"], out


# --------------------------------------------------------------------------
# package surface
# --------------------------------------------------------------------------
def test_bundled_models_registry():
    assert BUNDLED_MODELS == {"fcn8s": fcn8s, "deeplabv3": deeplabv3}


def test_scaled():
    assert scaled(64, 1.0) == 64
    assert scaled(64, 1 / 16) == 4
    assert scaled(64, 1 / 1000) == 1
    assert scaled(4096, 0.5) == 2048


def test_factories_return_training_mode():
    assert fcn8s(width=THINNER).training
    assert deeplabv3(width=THINNER).training


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": -1}, {"n_class": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        fcn8s(**kwargs)
    with pytest.raises(ValueError):
        deeplabv3(**kwargs)


# --------------------------------------------------------------------------
# FCN-8s
# --------------------------------------------------------------------------
def test_fcn8s_caffe_layout():
    with torch.device("meta"):
        m = fcn8s()
    assert m.conv1_1.in_channels == 3 and m.conv1_1.out_channels == 64
    assert m.conv1_1.padding == (100, 100)
    assert m.conv1_2.padding == (1, 1) and m.conv5_3.padding == (1, 1)
    for name in ("pool1", "pool2", "pool3", "pool4", "pool5"):
        p = getattr(m, name)
        assert isinstance(p, nn.MaxPool2d) and p.ceil_mode and p.kernel_size == 2 and p.stride == 2
    assert (m.fc6.in_channels, m.fc6.out_channels, m.fc6.kernel_size) == (512, 4096, (7, 7))
    assert (m.fc7.in_channels, m.fc7.out_channels, m.fc7.kernel_size) == (4096, 4096, (1, 1))
    assert isinstance(m.drop6, nn.Dropout2d) and isinstance(m.drop7, nn.Dropout2d)
    assert m.score_fr.in_channels == 4096 and m.score_fr.out_channels == 21
    assert m.score_pool3.in_channels == 256 and m.score_pool4.in_channels == 512
    for name, k, s in (("upscore2", 4, 2), ("upscore_pool4", 4, 2), ("upscore8", 16, 8)):
        up = getattr(m, name)
        assert isinstance(up, nn.ConvTranspose2d) and up.bias is None
        assert up.kernel_size == (k, k) and up.stride == (s, s)
        assert up.in_channels == up.out_channels == 21


def test_fcn8s_width_scaling_keeps_io_channels():
    with torch.device("meta"):
        m = fcn8s(n_class=7, width=THIN)
    assert m.conv1_1.in_channels == 3 and m.conv1_1.out_channels == 4
    assert m.fc6.out_channels == 256
    assert m.score_fr.out_channels == 7 and m.upscore8.out_channels == 7


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (31, 31), (32, 32), (33, 33), (100, 100),
                                (1, 100), (37, 64), (64, 3)])
def test_fcn8s_output_matches_input_size(fcn_thin, hw):
    with torch.no_grad():
        out = fcn_thin(torch.randn(1, 3, *hw))
    assert out.shape == (1, 5, *hw)
    assert torch.isfinite(out).all()


def test_fcn8s_init_is_sane(fcn_thin):
    # bilinear deconvolutions, non-degenerate output
    w = fcn_thin.upscore8.weight
    assert torch.allclose(w[0, 0].sum(), torch.tensor(64.0))  # stride**2
    assert w[0, 1].abs().sum() == 0
    with torch.no_grad():
        out = fcn_thin(torch.randn(1, 3, 40, 40))
    assert out.abs().sum() > 0


def test_fcn8s_fx_trace(fcn_thin):
    gm = torch.fx.symbolic_trace(fcn_thin)
    names = [n.name for n in gm.graph.nodes]
    for key in ("conv1_1", "pool3", "pool4", "fc6", "score_fr", "upscore2", "score_pool4",
                "upscore_pool4", "score_pool3", "upscore8"):
        assert key in names
    # the graph is size-generic: no shape got baked in
    for hw in ((1, 1), (45, 29)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            assert torch.equal(gm(x), fcn_thin(x))


# --------------------------------------------------------------------------
# DeepLab-v3
# --------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (17, 31), (64, 64), (513, 513)])
def test_deeplabv3_output_matches_input_size(dl_thin, hw):
    with torch.no_grad():
        out = dl_thin(torch.randn(1, 3, *hw))
    assert out.shape == (1, 4, *hw)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplabv3_aspp_input_size(backbone, output_stride):
    m = deeplabv3(n_class=3, backbone=backbone, output_stride=output_stride, width=THINNER).eval()
    for h, w in ((1, 1), (15, 16), (17, 33), (100, 63)):
        shape, out = _layer4_hw(m, torch.randn(1, 3, h, w))
        assert shape[2:] == (math.ceil(h / output_stride), math.ceil(w / output_stride))
        assert out.shape == (1, 3, h, w)


@pytest.mark.parametrize("backbone,channels", [("resnet18", 512), ("resnet34", 512),
                                               ("resnet50", 2048), ("resnet101", 2048)])
def test_deeplabv3_backbone_channels(backbone, channels):
    m = deeplabv3(backbone=backbone, width=THINNER).eval()
    assert m.backbone.out_channels == int(channels * THINNER)
    shape, _ = _layer4_hw(m, torch.randn(1, 3, 33, 33))
    assert shape == (1, int(channels * THINNER), 3, 3)


def test_deeplabv3_dilation_layout():
    with torch.device("meta"):
        m16 = deeplabv3(backbone="resnet50", output_stride=16)
        m8 = deeplabv3(backbone="resnet50", output_stride=8)
    l4 = m16.backbone.layer4
    assert l4[0].conv2.stride == (1, 1) and l4[0].conv2.dilation == (1, 1)
    assert l4[1].conv2.dilation == (2, 2) and l4[1].conv2.padding == (2, 2)
    assert l4[0].downsample[0].stride == (1, 1)
    assert [b[0].dilation[0] for b in (m16.aspp.b1, m16.aspp.b2, m16.aspp.b3)] == [6, 12, 18]
    assert m8.backbone.layer3[0].conv2.dilation == (1, 1)
    assert m8.backbone.layer3[1].conv2.dilation == (2, 2)
    assert m8.backbone.layer4[0].conv2.dilation == (2, 2)
    assert m8.backbone.layer4[1].conv2.dilation == (4, 4)
    assert [b[0].padding[0] for b in (m8.aspp.b1, m8.aspp.b2, m8.aspp.b3)] == [12, 24, 36]


def test_deeplabv3_batchnorm_buffers_initialised(dl_thin):
    for m in dl_thin.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
            assert int(m.num_batches_tracked) == 0


def test_deeplabv3_fx_trace(dl_thin):
    gm = torch.fx.symbolic_trace(dl_thin)
    names = [n.name for n in gm.graph.nodes]
    for key in ("backbone_conv1", "backbone_layer4_1_relu_1", "aspp_pooling_pool", "cat",
                "classifier", "interpolate_1"):
        assert key in names
    for hw in ((1, 1), (50, 37)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            assert torch.equal(gm(x), dl_thin(x))


def test_deeplabv3_align_corners_only_final_upsample():
    torch.manual_seed(0)
    a = deeplabv3(n_class=2, width=THINNER).eval()
    b = deeplabv3(n_class=2, width=THINNER, align_corners=True).eval()
    b.load_state_dict(a.state_dict())
    assert b.aspp.pooling is not None  # same structure
    x = torch.randn(1, 3, 70, 70)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
        # everything before the final upsample is identical
        assert torch.equal(a.classifier(a.aspp(a.backbone(x))), b.classifier(b.aspp(b.backbone(x))))


def test_deeplabv3_invalid_choices():
    with pytest.raises(ValueError, match="resnet101"):
        deeplabv3(backbone="resnet152")
    with pytest.raises(ValueError, match="16"):
        deeplabv3(output_stride=32)


# --------------------------------------------------------------------------
# meta device
# --------------------------------------------------------------------------
def test_meta_build_and_forward_full_width():
    with torch.device("meta"):
        dl = deeplabv3(backbone="resnet101")
        fcn = fcn8s()
    for m in (dl, fcn):
        assert all(t.is_meta for t in m.state_dict().values())
    assert dl.backbone.out_channels == 2048
    x = torch.empty(1, 3, 513, 513, device="meta")
    assert dl.eval()(x).shape == (1, 21, 513, 513)
    assert fcn.eval()(torch.empty(2, 3, 500, 375, device="meta")).shape == (2, 21, 500, 375)
