"""shapecalc export-spec: every spec is exported for real, its Python form is
executed and exported again, and what it covers is checked against meta
forward passes of the model (valid sizes it leaves out do run eagerly, and
the exported program refuses them)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from segmodels import deeplabv3, fcn8s
from shapecalc import export_spec
from shapecalc.cli import main


def _runs(model, shape) -> bool:
    try:
        with torch.no_grad():
            model(torch.empty(shape, device="meta"))
        return True
    except Exception:
        return False


def _check(model, result, symbol="H"):
    assert result.verified, result.error
    # the Python form pastes: executed, it gives a spec torch.export accepts
    namespace: dict = {}
    exec(result.python(), namespace)
    ep = torch.export.export(model, namespace["example_inputs"] and (torch.empty(result.example_shape, device="meta"),),
                             dynamic_shapes=namespace["dynamic_shapes"], strict=False)
    module = ep.module()
    covers, valid = result.covers[symbol], result.valid[symbol]
    assert covers and set(covers) <= set(valid)
    base = list(result.example_shape)
    axis = next(a for a, s in result.axes.items() if s == symbol)
    for n in sorted({covers[0], covers[-1]}):
        shape = base[:axis] + [n] + base[axis + 1:]
        assert _runs(model, shape)
        assert module(torch.empty(shape, device="meta")).shape == model(torch.empty(shape, device="meta")).shape
    left_out = sorted(set(valid) - set(covers))
    for n in left_out[:1] + left_out[-1:]:
        shape = base[:axis] + [n] + base[axis + 1:]
        assert _runs(model, shape), f"{symbol} = {n} is reported valid: the model must run there"
    return left_out


class _Cat4(nn.Module):
    """Two stride-2 stages, upsampled and concatenated: the cat needs H % 4 == 0."""

    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.MaxPool2d(2))
        self.up = nn.Upsample(scale_factor=4)

    def forward(self, x):
        return torch.cat([x, self.up(self.down(x))], dim=1)


def test_divisible_by_four_gives_a_derived_dim():
    with torch.device("meta"):
        model = _Cat4().eval()
    result = export_spec(model, "HxW", max_size=256)
    assert result.specs["H"].step == 4 and "4*Dim(" in result.python()
    _check(model, result)
    # sizes that are not multiples of 4 fail eagerly and are not covered
    assert not _runs(model, (1, 3, 30, 32)) and 30 not in result.covers["H"]


@pytest.mark.parametrize("build, first_bound", [(fcn8s, 27), (deeplabv3, 17)], ids=["fcn8s", "deeplabv3"])
def test_segmodels_widest_accepted_spec(build, first_bound):
    with torch.device("meta"):
        model = build(width=0.0625).eval()
    result = export_spec(model, "HxW", max_size=128)
    left_out = _check(model, result)
    # every H >= 1 runs; export's guards (a size-1 layer) cut what it accepts
    assert result.valid["H"] == list(range(1, 129))
    assert min(result.covers["H"]) == first_bound and left_out == list(range(1, first_bound))
    assert any(item.reason for item in result.left_out)
    data = result.as_data()
    assert data["verified"] is True and data["covers"]["count"]["H"] == 129 - first_bound


def test_third_party_model():
    pytest.importorskip("zoo_setup").require_zoo()
    from shapecalc import load_model

    model = load_model("monai.networks.nets:UNet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                                                    "channels": (4, 8), "strides": (2,)})
    result = export_spec(model, "HxW", max_size=64)
    _check(model, result)


def test_cli_json_and_bad_max(capsys):
    assert main(["export-spec", "fcn8s", "--input", "HxW", "--max", "70000"]) == 2
    assert "--max" in capsys.readouterr().err
    code = main(["export-spec", "segmodels.deeplabv3:deeplabv3", "--arg", "width=0.0625", "--input", "HxW",
                 "--max", "64", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["verified"] is True
    assert data["dynamic_shapes"]["x"]["2"] == {"kind": "dim", "name": "H", "min": 17, "max": 64}
    assert "H = 1..16" in data["covers"]["sentence"]
