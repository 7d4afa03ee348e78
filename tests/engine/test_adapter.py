"""The adapter: deformable attention against a naive reference, its initialisation, ConvFFN, the extractor
schedule, output shapes and gradient checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_dinounet.engine.adapter import (
    EXTRACTOR_TAPS,
    Adapter,
    ConvFFN,
    DeformableAttention,
    deformable_sample,
    reference_points,
)


def naive_bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample image (C, H, W) at (x, y) in [0, 1] of its extent: align_corners=False, zeros outside."""
    _, h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    for yi, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for xi, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= xi < w and 0 <= yi < h:
                out += wy * wx * image[:, yi, xi]
    return out


def naive_deformable_sample(value, locations, weights) -> torch.Tensor:
    """value (B, heads, Dh, Hv, Wv), locations (B, Nq, heads, P, 2), weights (B, Nq, heads, P) -> (B, Nq, heads*Dh)."""
    b, heads, dh = value.shape[:3]
    nq, points = locations.shape[1], locations.shape[3]
    out = torch.zeros(b, nq, heads * dh, dtype=torch.float64)
    for i in range(b):
        for q in range(nq):
            for h in range(heads):
                for p in range(points):
                    x, y = locations[i, q, h, p].tolist()
                    sample = naive_bilinear(value[i, h].double(), x, y)
                    out[i, q, h * dh : (h + 1) * dh] += weights[i, q, h, p].double() * sample
    return out


def test_deformable_sample_equals_naive_loops():
    torch.manual_seed(0)
    value = torch.randn(2, 3, 4, 5, 7)
    # locations spill over the edges so that zero padding is exercised
    locations = torch.rand(2, 6, 3, 4, 2) * 1.6 - 0.3
    weights = torch.rand(2, 6, 3, 4).softmax(-1)
    assert ((locations < 0) | (locations > 1)).any()
    fast = deformable_sample(value, locations, weights)
    assert fast.shape == (2, 6, 12) and fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), naive_deformable_sample(value, locations, weights), atol=1e-5, rtol=0)


def test_deformable_attention_module_equals_naive_reference():
    torch.manual_seed(1)
    attention = DeformableAttention(32, num_heads=4, points=3)
    with torch.no_grad():  # offsets and weights that vary with the query (the init makes both constant)
        attention.sampling_offsets.weight.normal_(0, 0.5)
        attention.attention_weights.weight.normal_(0, 0.5)
    hv, wv, nq = 5, 7, 10
    query, value = torch.randn(2, nq, 32), torch.randn(2, hv * wv, 32)
    reference = torch.rand(nq, 2)

    with torch.no_grad():
        out = attention(query, reference, value, (hv, wv))
        projected = attention.value_proj(value)  # (B, Hv*Wv, 16), 4 heads of 4 channels, row-major tokens
        offsets = attention.sampling_offsets(query).view(2, nq, 4, 3, 2)
        weights = attention.attention_weights(query).view(2, nq, 4, 3).softmax(-1)
        expected = torch.zeros(2, nq, 16, dtype=torch.float64)
        for i in range(2):
            maps = projected[i].T.reshape(16, hv, wv)
            for q in range(nq):
                for h in range(4):
                    for p in range(3):
                        dx, dy = offsets[i, q, h, p].tolist()
                        x = reference[q, 0].item() + dx / wv
                        y = reference[q, 1].item() + dy / hv
                        sample = naive_bilinear(maps[4 * h : 4 * h + 4].double(), x, y)
                        expected[i, q, 4 * h : 4 * h + 4] += weights[i, q, h, p].double() * sample
        expected = attention.output_proj(expected.float())
    assert offsets.abs().max() > 1  # some samples land between and beyond pixels
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def _identity_attention(dim: int) -> DeformableAttention:
    """One point per head, zero offsets, identity value and output projections."""
    attention = DeformableAttention(dim, num_heads=2, points=1, ratio=1.0)
    with torch.no_grad():
        attention.sampling_offsets.weight.zero_()
        attention.sampling_offsets.bias.zero_()
        for linear in (attention.value_proj, attention.output_proj):
            linear.weight.copy_(torch.eye(dim))
            linear.bias.zero_()
    return attention


def test_zero_offsets_one_point_sample_the_value_map_at_the_reference_points():
    torch.manual_seed(2)
    attention = _identity_attention(8)
    value_map = torch.randn(1, 8, 6, 10)
    tokens = value_map.flatten(2).transpose(1, 2)
    with torch.no_grad():
        # at the pixel centres of the value grid itself: the value map, exactly
        same = attention(torch.randn(1, 60, 8), reference_points([(6, 10)]), tokens, (6, 10))
        torch.testing.assert_close(same, tokens, atol=1e-6, rtol=0)
        # at the centres of a half-resolution grid: the mean of each 2x2 block
        half = attention(torch.randn(1, 15, 8), reference_points([(3, 5)]), tokens, (6, 10))
        pooled = F.avg_pool2d(value_map, 2).flatten(2).transpose(1, 2)
        torch.testing.assert_close(half, pooled, atol=1e-6, rtol=0)
        # anywhere: bilinear sampling (zeros outside)
        reference = torch.tensor([[0.0, 0.0], [0.33, 0.71], [1.0, 0.5], [0.05, 0.95]])
        some = attention(torch.randn(1, 4, 8), reference, tokens, (6, 10))
        expected = torch.stack([naive_bilinear(value_map[0].double(), *r.tolist()) for r in reference])
        torch.testing.assert_close(some[0].double(), expected, atol=1e-6, rtol=0)


def test_sampling_runs_in_fp32_under_autocast():
    torch.manual_seed(3)
    value = torch.randn(1, 2, 4, 5, 5)
    locations = torch.rand(1, 7, 2, 3, 2)
    weights = torch.rand(1, 7, 2, 3).softmax(-1)
    exact = deformable_sample(value, locations, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = deformable_sample(value.bfloat16(), locations, weights)
    assert mixed.dtype == torch.float32
    # only the bf16 rounding of the value itself remains (about 3 significant digits)
    torch.testing.assert_close(mixed, exact, atol=3e-2, rtol=0)


def test_attention_initialisation():
    attention = DeformableAttention(64)  # 16 heads, 4 points
    assert torch.count_nonzero(attention.sampling_offsets.weight) == 0
    bias = attention.sampling_offsets.bias.view(16, 4, 2)
    distances = torch.arange(1, 5, dtype=torch.float32)[:, None]
    # head h looks along angle 2*pi*h/16, max-normalised, point p at (p + 1) times that
    torch.testing.assert_close(bias[0], distances * torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(bias[2], distances * torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(bias[4], distances * torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[8], distances * torch.tensor([-1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[1], distances * torch.tensor([1.0, math.tan(math.pi / 8)]))
    assert torch.count_nonzero(attention.attention_weights.weight) == 0
    assert torch.count_nonzero(attention.attention_weights.bias) == 0
    for linear in (attention.value_proj, attention.output_proj):
        fan_in, fan_out = linear.in_features, linear.out_features
        assert linear.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))  # xavier uniform bound
        assert torch.count_nonzero(linear.bias) == 0


def test_adapter_initialisation():
    torch.manual_seed(4)
    adapter = Adapter(64)
    fc1 = adapter.extractors[0].ffn.fc1.weight
    assert abs(fc1.std().item() - 0.02) < 0.002 and torch.count_nonzero(adapter.extractors[0].ffn.fc1.bias) == 0
    conv = adapter.spm.conv4[0].weight  # 256 -> 256, 3x3: fan_out 2304
    assert abs(conv.std().item() - math.sqrt(2 / 2304)) < 0.05 * math.sqrt(2 / 2304)
    assert abs(adapter.level_embed.std().item() - 1) < 0.2
    # the generic linear init must not overwrite the attention's own start
    assert torch.count_nonzero(adapter.extractors[5].attention.sampling_offsets.weight) == 0
    assert adapter.extractors[5].attention.sampling_offsets.bias.abs().max() == 4


def test_reference_points_are_cell_centres_in_xy_order():
    points = reference_points([(2, 4), (1, 2)])
    expected = torch.tensor(
        [[0.125, 0.25], [0.375, 0.25], [0.625, 0.25], [0.875, 0.25],
         [0.125, 0.75], [0.375, 0.75], [0.625, 0.75], [0.875, 0.75],
         [0.25, 0.5], [0.75, 0.5]]
    )  # fmt: skip
    torch.testing.assert_close(points, expected)


def test_conv_ffn_convolves_each_grid_separately_with_shared_weights():
    torch.manual_seed(5)
    ffn = ConvFFN(32)
    shapes = [(4, 6), (2, 3)]
    tokens = torch.randn(1, 30, 32)
    changed = tokens.clone()
    changed[0, 23] += 5.0  # the last token of the first grid, spatially next to the start of the second
    with torch.no_grad():
        a, b = ffn(tokens, shapes), ffn(changed, shapes)
    diff = (a - b).abs().amax(-1)[0]
    assert torch.all(diff[24:] == 0)  # nothing leaks into the second grid
    assert diff[23] > 0 and diff[16] > 0 and diff[15] == 0  # 3x3 neighbourhood of (3, 5) in the 4x6 grid
    # the second grid goes through the very same depthwise conv as the first
    second = tokens[:, 24:]
    alone = ffn(torch.cat([torch.zeros(1, 24, 32), second], 1), shapes)[:, 24:]
    with torch.no_grad():
        h = ffn.fc1(second).transpose(1, 2).unflatten(2, (2, 3))
        by_hand = ffn.fc2(ffn.act(ffn.dwconv(h).flatten(2).transpose(1, 2)))
    torch.testing.assert_close(alone, by_hand)


def _taps(b, d, h, w, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, h // 16, w // 16, generator=generator) for _ in range(4)]


def test_adapter_shapes_on_a_non_square_input():
    torch.manual_seed(6)
    adapter = Adapter(64).eval()
    x = torch.randn(2, 3, 64, 160)
    with torch.no_grad():
        maps = adapter(x, _taps(2, 64, 64, 160, 0))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 16, 40), (2, 64, 8, 20), (2, 64, 4, 10), (2, 64, 2, 5)]


def test_extractors_follow_the_interaction_schedule():
    torch.manual_seed(7)
    adapter = Adapter(64).eval()
    taps = _taps(1, 64, 64, 96, 1)
    seen = []
    hooks = [
        e.tap_norm.register_forward_hook(lambda module, args, out: seen.append(args[0])) for e in adapter.extractors
    ]
    with torch.no_grad():
        adapter(torch.randn(1, 3, 64, 96), taps)
    for hook in hooks:
        hook.remove()
    assert EXTRACTOR_TAPS == (0, 1, 2, 3, 3, 3) and len(seen) == 6
    for tokens, tap_index in zip(seen, EXTRACTOR_TAPS):
        torch.testing.assert_close(tokens, taps[tap_index].flatten(2).transpose(1, 2))


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(8)
    plain = Adapter(64).eval()  # eval: drop-path off, so both runs are deterministic
    checkpointed = Adapter(64, grad_checkpointing=True).eval()
    checkpointed.load_state_dict(plain.state_dict())
    x, taps = torch.randn(1, 3, 64, 64), _taps(1, 64, 64, 64, 2)
    results = []
    for adapter in (plain, checkpointed):
        maps = adapter(x, taps)
        sum(m.square().mean() for m in maps).backward()
        results.append((maps, {n: p.grad for n, p in adapter.named_parameters()}))
    (maps_a, grads_a), (maps_b, grads_b) = results
    for a, b in zip(maps_a, maps_b):
        torch.testing.assert_close(a, b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


def test_width_must_split_into_heads():
    from napari_dinounet.engine.errors import DinoUNetError

    with pytest.raises(DinoUNetError, match="multiple of 32"):
        DeformableAttention(48)


def _direct_loss_run(adapter, x, taps, weights, contiguous_inputs=False):
    """Adapter maps and parameter gradients under a loss read straight off f1..f4, whose gradients reach
    the output BatchNorms NCHW-contiguous. ``contiguous_inputs`` makes the input of every BatchNorm and
    depthwise conv contiguous by pre-hooks: the authors' layout, the reference."""
    modules = [*adapter.norms, *(extractor.ffn.dwconv for extractor in adapter.extractors)]
    hooks = [
        m.register_forward_pre_hook(lambda module, args: (args[0].contiguous(),)) for m in modules if contiguous_inputs
    ]
    adapter.zero_grad()
    torch.manual_seed(11)  # the same drop-path draws in both runs
    maps = adapter(x, taps)
    sum((m * w).sum() for m, w in zip(maps, weights)).backward()
    for hook in hooks:
        hook.remove()
    return [m.detach() for m in maps], {n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batch_one_gradients_under_a_direct_loss_equal_the_contiguous_reference(mode):
    # D2 of the release-equivalence report: PyTorch's CPU BatchNorm backward returns wrong input gradients
    # for a channels-last view with a non-canonical batch stride at batch 1 (off by ~2x the gradient's scale)
    torch.manual_seed(9)
    adapter = Adapter(64).train(mode == "train")
    generator = torch.Generator().manual_seed(3)
    x, taps = torch.randn(1, 3, 64, 96, generator=generator), _taps(1, 64, 64, 96, 3)
    weights = [torch.randn(1, 64, 64 // s, 96 // s, generator=generator) for s in (4, 8, 16, 32)]
    maps, grads = _direct_loss_run(adapter, x, taps, weights)
    ref_maps, ref_grads = _direct_loss_run(adapter, x, taps, weights, contiguous_inputs=True)
    for got, want in zip(maps, ref_maps):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) == len(list(adapter.parameters()))
    # one scale for all: biases feeding a train-mode BatchNorm have a zero gradient up to rounding
    scale = max(g.abs().max() for g in ref_grads.values())
    for name, want in ref_grads.items():
        torch.testing.assert_close(grads[name], want, rtol=0, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("batch", [1, 2])
def test_contiguous_maps_leave_the_network_outputs_as_they_were(tiny_backbone, batch, monkeypatch):
    from napari_dinounet.engine.network import build_dinounet

    torch.manual_seed(10)
    model = build_dinounet(backbone=tiny_backbone, num_classes=3).eval()
    x = torch.randn(batch, 1, 64, 96)
    outputs = []
    with torch.no_grad():
        taps = model.backbone_taps(x)
        outputs.append((model.adapter(model.to_three_channels(x), taps), model(x, taps=taps)))
        # the code before the D2 fix: with Tensor.contiguous a no-op, the adapter passes on the channels-last
        # views it used to (the fix's only change)
        monkeypatch.setattr(torch.Tensor, "contiguous", lambda self, *args, **kwargs: self)
        outputs.append((model.adapter(model.to_three_channels(x), taps), model(x, taps=taps)))
    (maps, logits), (maps_before, logits_before) = outputs
    assert not maps_before[1].is_contiguous() and all(m.is_contiguous() for m in maps)
    # the same values in another layout (bitwise equal on the machine this was written on; a depthwise conv
    # may sum a channels-last input in another order elsewhere); the next kernels read the maps in another
    # layout too, so the logits move by rounding only (measured: 3e-6 at a scale of 2)
    for got, want in zip(maps, maps_before):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * want.abs().max().item())
    torch.testing.assert_close(logits, logits_before, rtol=0, atol=1e-5 * logits_before.abs().max().item())
