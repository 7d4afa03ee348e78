"""The three projections: shapes, parameter counts in closed form, FiLM wiring, shortcut and SE gating."""

from __future__ import annotations

import pytest
import torch

from napari_dinounet.engine.errors import DinoUNetError
from napari_dinounet.engine.projection import (
    CompactProjection,
    FidelityAwareProjection,
    PlainProjection,
    SqueezeExcitation,
    build_projection,
)

OUT = (32, 64, 128, 256)


def _maps(d: int, h: int = 16, w: int = 32, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, d, h >> i, w >> i, generator=generator) for i in range(4)]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kind", ["fapm", "plain", "compact"])
def test_every_projection_maps_widths_and_keeps_sizes(kind):
    torch.manual_seed(0)
    projection = build_projection(kind, 64, OUT)
    with torch.no_grad():
        out = projection(_maps(64))
    assert [tuple(y.shape) for y in out] == [(2, 32, 16, 32), (2, 64, 8, 16), (2, 128, 4, 8), (2, 256, 2, 4)]
    assert all(torch.isfinite(y).all() for y in out)


@pytest.mark.parametrize("d", [64, 384, 4096])
def test_parameter_counts_in_closed_form(d):
    # spec section 3 / release analysis section 3: FAPM 1280 D + 901,694; plain 480 D + 1,440;
    # compact: the shared D -> 128 conv (128 D + 128) plus the four rank-128 refinement branches (255,070)
    with torch.device("meta"):
        assert _count(FidelityAwareProjection(d, OUT)) == 1280 * d + 901_694
        assert _count(PlainProjection(d, OUT)) == 480 * d + 1_440
        assert _count(CompactProjection(d, OUT)) == 128 * d + 128 + 255_070


def test_which_variants_use_learnable_upsampling():
    assert FidelityAwareProjection.learnable_upsampling and CompactProjection.learnable_upsampling
    assert not PlainProjection.learnable_upsampling


def test_fapm_modulates_the_scale_basis_with_film_from_the_shared_basis():
    torch.manual_seed(1)
    fapm = FidelityAwareProjection(64, OUT).eval()
    maps, other = _maps(64, seed=2), _maps(64, seed=3)
    with torch.no_grad():
        # gamma = 0, beta = a constant: z no longer depends on x, so neither does the output
        for film in fapm.film:
            film.weight.zero_()
            film.bias[:256].zero_()
            film.bias[256:].normal_()
        a, b = fapm(maps), fapm(other)
        for ya, yb in zip(a, b):
            torch.testing.assert_close(ya, yb)
        # gamma = 1, beta = 0: the output is refine(specific(x)) + shortcut(specific(x)); shared is out
        for film in fapm.film:
            film.bias[:256].fill_(1.0)
            film.bias[256:].zero_()
        fapm.shared_basis.weight.normal_()
        c = fapm(maps)
        for i, (x, y) in enumerate(zip(maps, c)):
            z = fapm.scale_bases[i](x)
            torch.testing.assert_close(y, fapm.refinements[i](z) + fapm.shortcuts[i](z))
            assert not torch.allclose(y, a[i])


def test_fapm_shortcut_is_identity_only_at_the_rank_width():
    fapm = FidelityAwareProjection(64, OUT)
    assert [type(s).__name__ for s in fapm.shortcuts] == ["Conv2d", "Conv2d", "Conv2d", "Identity"]


def test_squeeze_excitation_gates_channels_between_zero_and_input():
    torch.manual_seed(4)
    se = SqueezeExcitation(64)
    assert se.gate[1].out_channels == 4  # 64 // 16
    x = torch.rand(2, 64, 5, 5) + 0.1
    with torch.no_grad():
        y = se(x)
    ratio = y / x
    # one gate per channel and sample, in (0, 1)
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-6)
    assert ((ratio > 0) & (ratio < 1)).all()
    assert SqueezeExcitation(8).gate[1].out_channels == 1  # never zero hidden channels


def test_plain_projection_is_conv_norm_leaky_relu():
    torch.manual_seed(5)
    plain = PlainProjection(64, OUT)
    with torch.no_grad():
        out = plain(_maps(64))
    for y in out:
        # instance norm then LeakyReLU(0.01): negatives are 1% of a standardised value
        assert y.min() < 0 and y.min() > -0.1
        assert y.max() > 1


def test_unknown_projection_is_a_clear_error():
    with pytest.raises(DinoUNetError, match="unknown projection 'film'.*fapm, plain, compact"):
        build_projection("film", 64, OUT)
