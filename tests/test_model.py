"""The timm-based model builder: published GPUNets, output shapes, ONNX parity, the per-layer description."""

from __future__ import annotations


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
