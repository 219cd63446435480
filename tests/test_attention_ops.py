"""Small models built from the attention, sliding-block and advanced-indexing
rules (a ViT block, a Swin-style relative position bias, im2col round trips,
LP pooling), each checked against CPU forward passes: every node's shape at a
grid of sizes, and whether torch runs at each of them."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from shapecalc import UnsupportedOpError, analyze
from shapecalc.engine.symbolic import size_symbol
from test_rules import assert_same, graph_values, torch_values


class TinyViT(nn.Module):
    """Patch embedding, class token, fixed position embedding, one MHA block
    (nn.MultiheadAttention) and one SDPA block: valid at exactly 16x24."""

    def __init__(self, batch_first=True):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.position = nn.Parameter(torch.zeros(1, 1 + 4 * 6, 8))
        self.attention = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.position
        if self.attention.batch_first:
            attended, weights = self.attention(tokens, tokens, tokens)
        else:
            seq = tokens.transpose(0, 1)
            attended, weights = self.attention(seq, seq, seq, need_weights=False)
            attended = attended.transpose(0, 1)
        q, k, v = self.qkv(attended).reshape(tokens.shape[0], -1, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return mixed[:, 0], weights


class RelativeBias(nn.Module):
    """Window attention with a learned bias gathered by a buffer of indices
    (timm's Swin): the window is the whole (H, W) input, 3x5 by the table."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(5 * 9, 2))
        coords = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        self.register_buffer("index", (relative[..., 0] + 2) * 9 + relative[..., 1] + 4)

    def forward(self, x):
        tokens = x.flatten(2).transpose(1, 2)  # (1, H*W, C)
        bias = self.table[self.index.view(-1)].view(15, 15, 2).permute(2, 0, 1)
        q = tokens.unsqueeze(1).expand(-1, 2, -1, -1)
        scores = q @ q.transpose(-2, -1) + bias.unsqueeze(0)
        return scores.softmax(-1) @ q


class Blocks(nn.Module):
    """im2col, a per-block linear map, col2im back to the input's size; LP
    pooling and Tensor.unfold windows beside it."""

    def __init__(self):
        super().__init__()
        self.unfold = nn.Unfold(3, padding=1, stride=2)
        self.pool = nn.LPPool2d(2, (2, 3), stride=(1, 2), ceil_mode=True)

    def forward(self, x):
        columns = self.unfold(x)
        image = F.fold(columns * 2, x.shape[2:], 3, padding=1, stride=2)
        windows = x.unfold(3, 3, 2).unfold(2, 2, 1)
        return image, self.pool(x.abs()), windows, F.lp_pool1d(x.flatten(2).abs(), 1.5, 4)


def _check_against_cpu(module, channels, grid):
    analysis = analyze(module, "HxW", channels=channels)
    values = graph_values(analysis.graph_module)
    h, w = size_symbol("H"), size_symbol("W")
    ran = 0
    for height, width in grid:
        env = {h: height, w: width}
        real = torch_values(analysis.graph_module, channels, (height, width))
        runs = not isinstance(real, Exception)
        assert (env in analysis.domain) == runs, f"{height}x{width}: torch {'runs' if runs else real!r}, " \
                                                 f"shapecalc: {analysis.validity_sentence()}"
        if runs:
            ran += 1
            for name, value in real.items():
                assert_same(values[name], value, env, f"{height}x{width}, node {name}")
    return analysis, ran


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_tiny_vit_is_valid_at_its_one_size_and_every_node_matches(batch_first):
    torch.manual_seed(0)
    grid = [(16, 24), (24, 16), (16, 25), (17, 24), (19, 27), (12, 24), (20, 28)]
    analysis, ran = _check_against_cpu(TinyViT(batch_first).eval(), 3, grid)
    assert 0 < ran < len(grid)  # 24 patches: floor(H/4) * floor(W/4) = 24


def test_a_relative_position_bias_gather_matches():
    grid = [(3, 5), (5, 3), (1, 15), (3, 4), (2, 7)]
    analysis, ran = _check_against_cpu(RelativeBias().eval(), 2, grid)
    assert 0 < ran < len(grid)  # H*W = 15


def test_sliding_blocks_match_on_a_grid():
    grid = list(itertools.product((1, 2, 3, 4, 7, 10), (1, 2, 3, 5, 8, 13)))
    analysis, ran = _check_against_cpu(Blocks().eval(), 2, grid)
    assert 0 < ran < len(grid)


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.ones(4, dtype=torch.bool))

    def forward(self, x):
        return x.flatten(2)[0, 0][self.mask]


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("index", torch.zeros(2, dtype=torch.long))

    def forward(self, x):
        return x[0, :, self.index]


@pytest.mark.parametrize("module, piece", [(Masked(), "mask"), (Mixed(), "mixed with integers or None")])
def test_advanced_indexing_shapecalc_cannot_size_is_refused_in_one_line(module, piece):
    with pytest.raises(UnsupportedOpError) as refused:
        analyze(module, "HxW", channels=1)
    assert piece in str(refused.value) and "\n" not in str(refused.value)
    # torch runs both: the refusal is shapecalc's, not a size verdict
    with torch.no_grad():
        module(torch.randn(1, 1, 2, 2))


SWIN_KEYS = ["shifted_window_attention", "_get_relative_position_bias", "_patch_merging_pad"]


@pytest.mark.parametrize("name", SWIN_KEYS)
def test_torchvision_swin_helpers_match_torch(name):
    # test_rules skips these cases where torchvision does not import on its own;
    # here it is imported with the zoo's workaround
    pytest.importorskip("zoo_setup").require_torchvision()
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from shapecalc.engine import rules
    from shapecalc._selftest.op_cases import OP_CASES
    from test_rules import cross_check

    key = rules.QualifiedName(f"torchvision.models.swin_transformer.{name}")

    @settings(max_examples=4)
    @given(case=OP_CASES[key](), data=st.data())
    def check(case, data):
        cross_check(case, data)

    check()


def test_a_fractional_ratio_rounds_as_python_on_concrete_sizes_and_is_refused_on_symbolic_ones():
    layer = nn.FractionalMaxPool2d(2, output_ratio=0.7)
    for height, width in [(10, 13), (20, 7), (3, 3), (2, 9)]:
        try:
            with torch.no_grad():
                expected = tuple(layer(torch.randn(1, 1, height, width)).shape)
        except RuntimeError:
            expected = None
        try:
            predicted = analyze(layer, f"{height}x{width}", channels=1).outputs["output"].shape
            predicted = tuple(int(s) for s in predicted)
        except Exception:  # noqa: BLE001 - a size verdict
            predicted = None
        assert predicted == expected, (height, width)
    with pytest.raises(UnsupportedOpError, match="not exact in double precision"):
        analyze(layer, "HxW", channels=1)


class Pattern(nn.Module):
    """``rearrange(x, pattern)`` with einops' function named as a global (how
    models call it, and what keeps it one node)."""

    def __init__(self, pattern, **lengths):
        super().__init__()
        self.pattern, self.lengths = pattern, lengths

    def forward(self, x):
        return rearrange(x, self.pattern, **self.lengths)


try:
    from einops import rearrange
except ImportError:
    rearrange = None


@pytest.mark.parametrize("pattern, piece", [("b ... -> b (...)", "'...' inside parentheses"),
                                            ("b c h w -> b c (h (w))", "nested parentheses"),
                                            ("b c h w -> b c h w 2", "'2' is not supported")])
def test_an_einops_pattern_outside_the_grammar_is_refused_in_one_line(pattern, piece):
    if rearrange is None:
        pytest.skip("einops is not installed")
    with pytest.raises(UnsupportedOpError) as refused:
        analyze(Pattern(pattern), "HxW", channels=1)
    assert piece in str(refused.value) and "\n" not in str(refused.value)


def test_an_einops_pattern_inside_the_grammar_matches_torch():
    if rearrange is None:
        pytest.skip("einops is not installed")
    grid = [(2, 4), (3, 4), (4, 6), (6, 5), (1, 2)]
    for pattern, lengths in [("b c (h p) (w q) -> b (h w) (p q c)", {"p": 2, "q": 2}), ("b c h w -> b w (c h)", {}),
                             ("b ... w -> w b ...", {}), ("b c h w -> b c h w", {"h": 3})]:
        _, ran = _check_against_cpu(Pattern(pattern, **lengths), 2, grid)
        assert 0 < ran
