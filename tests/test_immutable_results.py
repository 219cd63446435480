"""An Analysis and its Domain are final once ``analyze`` returns: every
report reads the same answers, and a mutation attempt is an error."""

import dataclasses
import json

import pytest
import sympy
import torch
import torch.nn as nn

from shapecalc import analyze
from shapecalc.answers.checking import check
from shapecalc.answers.cost import cost
from shapecalc.answers.sizes import sizes_report
from shapecalc.engine.domain import Domain, PeriodicSet, Requirement
from shapecalc.output.docsgen import render_page
from shapecalc.output.picture import domain_picture
from shapecalc.output.report import render_markdown, to_json

H = sympy.Symbol("H", integer=True, positive=True)


def _net():
    # a skip whose crop the audits look at, so crops, merges and aligned sizes are not empty
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(3, 3, 3, stride=2)
            self.up = nn.ConvTranspose2d(3, 3, 3, stride=2)

        def forward(self, x):
            y = self.up(self.down(x))
            return x[:, :, :y.shape[2], :y.shape[3]] + y

    return Skip()


@pytest.fixture(scope="module")
def analysis():
    return analyze(_net(), "H")


def _runs(model, size: int) -> bool:
    try:
        model(torch.zeros(1, 3, size, size))
    except RuntimeError:
        return False
    return True


def test_fields_cannot_be_set_and_collections_are_read_only(analysis):
    with pytest.raises(dataclasses.FrozenInstanceError):
        analysis.model = "other"
    assert all(isinstance(getattr(analysis, name), tuple)
               for name in ("layers", "crops", "merges", "resamples", "notes", "alignment_undecided"))
    with pytest.raises(AttributeError):
        analysis.layers.append(analysis.layers[0])
    with pytest.raises(TypeError):
        analysis.outputs["extra"] = analysis.outputs["output"]
    with pytest.raises(TypeError):
        analysis.aligned_domain[H] = PeriodicSet.everything()


def test_the_domain_is_frozen_after_analysis(analysis):
    domain = analysis.domain
    assert domain.frozen
    with pytest.raises(dataclasses.FrozenInstanceError, match="final after analysis"):
        domain.add(Requirement(sympy.Ge(H, 100), "mine", "at least 100"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        domain.cells = []
    with pytest.raises(TypeError):
        domain.sets[H] = PeriodicSet.everything()
    with pytest.raises(AttributeError):
        domain.requirements.append(domain.requirements[0])


def test_a_new_domain_takes_requirements_until_frozen():
    domain = Domain((H,))
    domain.add(Requirement(sympy.Ge(H, 3), "conv", "kernel 3"))
    assert domain.sets[H].minimum() == 3
    domain.freeze()
    with pytest.raises(dataclasses.FrozenInstanceError):
        domain.add(Requirement(sympy.Ge(H, 5), "conv2", "kernel 5"))
    assert domain.sets[H].minimum() == 3


def test_every_report_reads_the_same_answers_and_they_are_torchs(analysis):
    model = _net()
    before = json.dumps(to_json(analysis), sort_keys=True, default=str)
    check(analysis, expect_output="H")
    sizes_report(analysis, near=9).to_text()
    cost(analysis, _net())
    domain_picture(analysis)
    render_markdown(analysis)
    render_page(analysis, [9, 10])
    assert json.dumps(to_json(analysis), sort_keys=True, default=str) == before
    # what they all read is what torch does: the smallest size that runs, and the one below it
    smallest = analysis.valid_sizes("H").minimum()
    assert _runs(model, smallest) and not _runs(model, smallest - 1)


def test_a_variant_is_a_new_analysis(analysis):
    renamed = dataclasses.replace(analysis, model="renamed")
    assert renamed.model == "renamed" and analysis.model != "renamed"
    assert renamed.domain is analysis.domain and renamed.layers == analysis.layers
