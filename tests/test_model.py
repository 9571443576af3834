"""The timm-based model builder: published GPUNets, output shapes, ONNX parity, the per-layer description."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from timm.models._efficientnet_blocks import ConvBnAct, EdgeResidual, InvertedResidual, SqueezeExcite
from torch import nn

from gpunet import NotInSpaceError, load_space
from gpunet.archs import ARCHS_DIR
from gpunet.model import build_model, export_onnx, model_stats
from gpunet.nvidia import load_architecture

DATA = ARCHS_DIR  # NVIDIA's released layer lists (package data)

# GPUNet paper, Table 3: parameters in millions.
PUBLISHED_PARAMS_M = {"gpunet-0": 11.9, "gpunet-1": 12.7, "gpunet-2": 25.8}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_published_gpunets_match_table_3_parameters(name):
    arch = load_architecture(DATA / f"{name}.json")
    stats = model_stats(arch)
    assert stats.params_m == pytest.approx(PUBLISHED_PARAMS_M[name], rel=0.01)
    assert stats.gflops > 1.0


def test_gpunet_2_encodes_into_the_gpunet_preset_with_a_1280_head():
    arch = load_architecture(DATA / "gpunet-2.json")
    space = load_space({"preset": "gpunet", "headChannels": 1280})
    vector = space.encode(arch)
    assert len(vector) == 41 and vector[0] == 384
    assert space.decode(vector) == arch
    # Without the override the head width is fixed at Table 1's 1792.
    with pytest.raises(NotInSpaceError, match="head channels"):
        load_space("gpunet").encode(arch)


@pytest.mark.parametrize("name, field", [("gpunet-0", "stage 4 filters"), ("gpunet-1", "stage 5 filters")])
def test_gpunet_0_and_1_exceed_table_1_and_say_where(name, field):
    arch = load_architecture(DATA / f"{name}.json")
    space = load_space({"preset": "gpunet", "headChannels": 1280})
    with pytest.raises(NotInSpaceError) as info:
        space.encode(arch)
    assert info.value.field == field


def test_tiny_network_forward_shape():
    space = load_space("gpunet-tiny")
    arch = space.decode(space.sample(1, seed=0)[0].tolist())
    model = build_model(arch).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)


def test_gpunet_network_forward_shape():
    space = load_space({"preset": "gpunet", "resolution": [224]})
    vector = space.sample(1, seed=0)[0].tolist()
    model = build_model(space.decode(vector)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)


def test_onnx_runtime_matches_torch(tmp_path):
    import onnxruntime as ort

    space = load_space("gpunet-tiny")
    arch = space.decode(space.sample(1, seed=2)[0].tolist())
    torch.manual_seed(0)
    model = build_model(arch).eval()
    path = export_onnx(model, tmp_path / "net.onnx", (1, 1, 28, 28))
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_built_layers_follow_the_layer_specs():
    space = load_space("gpunet-small")
    arch = space.decode(space.sample(1, seed=3)[0].tolist())
    model = build_model(arch)
    specs = arch.layer_specs()
    blocks = [m for stage in model.blocks for m in stage]
    assert len(blocks) == len(specs) - 2
    kinds = {"conv": ConvBnAct, "fused_irb": EdgeResidual, "irb": InvertedResidual}
    x = torch.randn(1, arch.in_chans, arch.resolution, arch.resolution)
    model.eval()
    with torch.no_grad():
        x = model.stem(x)
        assert tuple(x.shape) == specs[0].output_shape
        for block, spec in zip(blocks, specs[1:-1]):
            assert isinstance(block, kinds[spec.type])
            assert tuple(x.shape) == spec.input_shape
            x = block(x)
            assert tuple(x.shape) == spec.output_shape


def test_block_details_match_the_gpunet_release():
    arch = load_architecture(DATA / "gpunet-2.json")
    model = build_model(arch)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.eps == pytest.approx(1e-3) for bn in bns)
    # SE squeezes to a quarter of the block's input channels (stage 6: 160 -> 40, then 224 -> 56).
    with_se = [(b, spec) for b, spec in zip((b for st in model.blocks for b in st), arch.layer_specs()[1:-1]) if spec.se]
    assert len(with_se) == 1 + 8  # stage 2 (1 layer) and stage 6 (8 layers)
    for block, spec in with_se:
        assert isinstance(block.se, SqueezeExcite) and block.se.conv_reduce.out_channels == spec.in_chs // 4
    # Drop-path grows linearly from 0 to the architecture's rate over the blocks.
    rates = [float(getattr(b.drop_path, "drop_prob", 0.0) or 0.0) for stage in model.blocks for b in stage if hasattr(b, "drop_path")]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(arch.drop_path_rate)
    assert all(b >= a for a, b in zip(rates, rates[1:]))
    head = model.head
    assert head.conv_head.conv.kernel_size == (1, 1) and head.conv_head.conv.out_channels == 1280
    assert head.classifier.fc.out_features == 1000


def test_layer_specs_describe_latency_relevant_attributes():
    arch = load_architecture(DATA / "gpunet-2.json")
    specs = arch.layer_specs(batch_size=4)
    assert specs[0].type == "conv" and specs[0].input_shape == (4, 3, 384, 384) and specs[0].stride == 2
    assert specs[-1].type == "head" and specs[-1].out_chs == 1280 and specs[-1].num_classes == 1000
    first_irb = next(s for s in specs if s.type == "irb")
    assert first_irb.describe() == "irb k3 e6 se0 swish s2 4x112x48x48->144"
    # The paper (4.2.3): "GPUNet-2 has 33 layers" -- stem and blocks; the head makes 34.
    assert len(specs) == arch.num_layers == 34


# --- gpunet-x: EfficientNet-X's space-to-depth stem and hybrid stages ------------------------------------------


def gpunet_x_tiny_arch(stem: str, blocks: dict[int, str], resolution: int = 32):
    """A gpunet-x-tiny network with the given stem and per-stage block types (other digits from one sample)."""
    from gpunet.arch import BLOCK_TYPES

    space = load_space("gpunet-x-tiny")
    vector = space.sample(1, seed=4)[0].tolist()
    vector[0] = resolution
    for digit in space.digits:
        if digit.attr == "block":
            vector[digit.index] = BLOCK_TYPES.index(stem if digit.stage == 0 else blocks.get(digit.stage, "irb"))
        if digit.attr == "layers" and digit.stage in blocks:
            vector[digit.index] = max(digit.values)
    return space, vector, space.decode(vector)


def test_space_to_depth_stem_is_pixel_unshuffle_then_a_stride_1_conv():
    from gpunet.arch import LayerSpec
    from gpunet.model import SpaceToDepthConv, build_layer

    spec = LayerSpec("s2d_conv", (2, 3, 32, 32), 16, kernel=3, stride=2, act="swish")
    layer = build_layer(spec).eval()
    assert isinstance(layer, SpaceToDepthConv) and isinstance(layer.space_to_depth, nn.PixelUnshuffle)
    assert layer.conv.conv.in_channels == 12 and layer.conv.conv.stride == (1, 1)
    # parameters: a 3x3 conv from 4*3 channels to 16, no bias, plus BN's weight and bias
    assert sum(p.numel() for p in layer.parameters()) == 12 * 16 * 3 * 3 + 2 * 16
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = layer(x)
    assert tuple(out.shape) == spec.output_shape == (2, 16, 16, 16)
    # torch's rearrangement: output channel 4c + 2i + j holds pixel (i, j) of every 2x2 block of channel c
    assert torch.equal(layer.space_to_depth(x)[0, 0], x[0, 0, 0::2, 0::2])
    assert torch.equal(layer.space_to_depth(x)[0, 3], x[0, 0, 1::2, 1::2])
    assert torch.equal(layer.space_to_depth(x)[0, 4 + 1], x[0, 1, 0::2, 1::2])


def test_gpunet_x_tiny_blocks_follow_their_digits_and_count_parameters():
    from gpunet.model import SpaceToDepthConv

    hybrid = {2: "irb", 3: "fused_irb", 4: "fused_irb", 6: "irb"}
    _, _, arch = gpunet_x_tiny_arch("s2d_conv", hybrid)
    model = build_model(arch)
    assert isinstance(model.stem, SpaceToDepthConv)
    kinds = {"conv": ConvBnAct, "fused_irb": EdgeResidual, "irb": InvertedResidual}
    for stage, block in hybrid.items():
        assert model.blocks[stage] and all(isinstance(b, kinds[block]) for b in model.blocks[stage])
    # the space-to-depth stem only widens the stem's input: 4x the channels of a 3x3 stride-2 conv stem
    _, _, conv_arch = gpunet_x_tiny_arch("conv", hybrid)
    filters, k = arch.stages[0].filters, arch.stages[0].kernel
    extra = (4 - 1) * arch.in_chans * filters * k * k
    assert model_stats(arch, model).params == model_stats(conv_arch).params + extra
    x = torch.randn(1, arch.in_chans, arch.resolution, arch.resolution)
    specs = arch.layer_specs()
    model.eval()
    with torch.no_grad():
        x = model.stem(x)
        assert tuple(x.shape) == specs[0].output_shape
        for block, spec in zip((b for st in model.blocks for b in st), specs[1:-1]):
            assert tuple(x.shape) == spec.input_shape
            x = block(x)
            assert tuple(x.shape) == spec.output_shape


@pytest.mark.parametrize("stem, resolution", [("s2d_conv", 28), ("conv", 32)])
def test_gpunet_x_tiny_network_exports_to_onnx_with_parity(tmp_path, stem, resolution):
    import onnxruntime as ort

    _, _, arch = gpunet_x_tiny_arch(stem, {2: "irb", 4: "fused_irb", 7: "fused_irb"}, resolution)
    torch.manual_seed(0)
    model = build_model(arch).eval()
    path = export_onnx(model, tmp_path / "net.onnx", (1, 1, resolution, resolution))
    x = torch.randn(1, 1, resolution, resolution)
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_space_to_depth_stem_refuses_an_odd_input_size():
    from gpunet import SpaceError

    _, _, arch = gpunet_x_tiny_arch("s2d_conv", {})
    odd = dataclasses.replace(arch, resolution=29)
    with pytest.raises(SpaceError, match="stage 0 input size"):
        odd.layer_specs()
