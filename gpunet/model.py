"""Build an ``nn.Module`` from an :class:`~gpunet.arch.Architecture` with timm's EfficientNet blocks.

Blocks (timm ``timm.models._efficientnet_blocks``): ``ConvBnAct`` for the stem and stage-1 convolutions,
:class:`SpaceToDepthConv` (``torch.nn.PixelUnshuffle`` then ``ConvBnAct``) for EfficientNet-X's space-to-depth
stem, ``EdgeResidual`` for fused IRBs, ``InvertedResidual`` for IRBs, ``SqueezeExcite`` inside them. The SE
reduction is a quarter of the block's *input* channels (``rd_ratio = 0.25 / expansion`` of the expanded
width), as in NVIDIA's GPUNet release. BatchNorm eps is 1e-3; the drop-path rate grows linearly from 0 to
``arch.drop_path_rate`` over the blocks. Head: 1x1 conv + BN + activation, global average pool, dropout,
linear. Padding is symmetric ``k // 2`` (timm's default), so every stride-2 layer maps ``H`` to
``ceil(H / 2)``; NVIDIA's fused IRBs with stride 2 use no padding, which changes feature-map sizes by a
pixel but no parameter.

One layer of the built network corresponds to one :class:`~gpunet.arch.LayerSpec` of
``arch.layer_specs()``, which is what the latency table measures: layer shapes come from one derivation
(:func:`gpunet.arch.stage_layers`), and a new block type needs its shape rule there and its module here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from timm.layers import ClassifierHead, get_act_layer
from timm.models._efficientnet_blocks import ConvBnAct, EdgeResidual, InvertedResidual, SqueezeExcite
from torch import nn

from .arch import LAYER_TYPES, SPACE_TO_DEPTH_BLOCK, Architecture, LayerSpec
from .errors import SpaceError

#: BatchNorm epsilon of the GPUNet release (and TensorFlow's EfficientNet).
BN_EPS = 1e-3
#: Squeeze-excitation reduction, relative to a block's input channels.
SE_RATIO = 0.25
_ACT_NAMES = {"relu": "relu", "swish": "silu"}


def build_layer(spec: LayerSpec, drop_path_rate: float = 0.0, dropout: float = 0.0) -> nn.Module:
    """Build one layer (stem/conv, space-to-depth stem, fused IRB, IRB or head) from its :class:`LayerSpec`.

    Input ``N x spec.in_chs x H x W``; output as ``spec.output_shape`` (head: ``N x num_classes``).

    Raises:
        SpaceError: an unknown layer type.
    """
    act = get_act_layer(_ACT_NAMES[spec.act])
    norm = partial(nn.BatchNorm2d, eps=BN_EPS)
    if spec.type == "conv":
        return ConvBnAct(spec.in_chs, spec.out_chs, spec.kernel, stride=spec.stride, act_layer=act, norm_layer=norm)
    if spec.type == "s2d_conv":
        return SpaceToDepthConv(spec.in_chs, spec.out_chs, spec.kernel, act_layer=act, norm_layer=norm)
    se_layer = partial(SqueezeExcite, rd_ratio=SE_RATIO / spec.expansion) if spec.se else None
    if spec.type == "fused_irb":
        return EdgeResidual(
            spec.in_chs, spec.out_chs, exp_kernel_size=spec.kernel, stride=spec.stride, exp_ratio=spec.expansion,
            act_layer=act, norm_layer=norm, se_layer=se_layer, drop_path_rate=drop_path_rate,
        )
    if spec.type == "irb":
        return InvertedResidual(
            spec.in_chs, spec.out_chs, dw_kernel_size=spec.kernel, stride=spec.stride, exp_ratio=spec.expansion,
            act_layer=act, norm_layer=norm, se_layer=se_layer, drop_path_rate=drop_path_rate,
        )
    if spec.type == "head":
        return GPUNetHead(spec.in_chs, spec.out_chs, spec.num_classes, act_layer=act, dropout=dropout)
    raise SpaceError("layer type", spec.type, LAYER_TYPES)


class SpaceToDepthConv(nn.Module):
    """EfficientNet-X's space-to-depth stem (Li et al., CVPR 2021, section 3): a stride-2 convolution recast as
    a space-to-depth rearrangement and a stride-1 convolution, which keeps the matrix units busier on the
    first, channel-poor layer.

    ``N x in_chs x H x W`` -> ``torch.nn.PixelUnshuffle(block_size)`` -> ``N x in_chs*block_size^2 x H/b x W/b``
    -> ``ConvBnAct(kernel, stride 1)`` -> ``N x out_chs x H/b x W/b``. ``H`` and ``W`` must be multiples of
    ``block_size`` (PixelUnshuffle raises otherwise). EfficientNet-X halves the kernel of the converted
    convolution to an even size; here the kernel stays odd, so that 'same' padding stays symmetric as in every
    other layer.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, *, block_size: int = SPACE_TO_DEPTH_BLOCK,
                 act_layer: type[nn.Module] = nn.ReLU, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.space_to_depth = nn.PixelUnshuffle(block_size)
        self.conv = ConvBnAct(in_chs * block_size**2, out_chs, kernel_size, stride=1, act_layer=act_layer,
                              norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.space_to_depth(x))


class GPUNetHead(nn.Module):
    """1x1 conv + BN + activation, then global average pool, dropout and a linear classifier."""

    def __init__(self, in_chs: int, head_chs: int, num_classes: int, act_layer: type[nn.Module], dropout: float) -> None:
        super().__init__()
        self.conv_head = ConvBnAct(in_chs, head_chs, 1, act_layer=act_layer, norm_layer=partial(nn.BatchNorm2d, eps=BN_EPS))
        self.classifier = ClassifierHead(head_chs, num_classes, pool_type="avg", drop_rate=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv_head(x))


class GPUNet(nn.Module):
    """A GPUNet-family CNN. ``forward``: ``N x in_chans x R x R`` images -> ``N x num_classes`` logits."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        specs = arch.layer_specs()
        blocks = specs[1:-1]
        self.stem = build_layer(specs[0])
        stages: list[list[nn.Module]] = [[] for _ in range(len(arch.stages))]
        for i, spec in enumerate(blocks):
            rate = arch.drop_path_rate * i / max(len(blocks) - 1, 1)
            stages[spec.stage].append(build_layer(spec, drop_path_rate=rate))
        self.blocks = nn.Sequential(*(nn.Sequential(*layers) for layers in stages))
        self.head = build_layer(specs[-1], dropout=arch.dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_model(arch: Architecture) -> nn.Module:
    """Build the network of ``arch`` (weights initialised by PyTorch's defaults): a :class:`GPUNet`, or the timm
    model of a baseline (:class:`gpunet.baselines.TimmNetwork`, ``pretrained=False``)."""
    from .baselines import TimmNetwork

    if isinstance(arch, TimmNetwork):
        return arch.build()
    return GPUNet(arch)


@dataclass(frozen=True)
class ModelStats:
    """Size and cost of a network at its own resolution, batch 1."""

    params: int
    flops: int  # FLOPs of one forward pass (a multiply-add counts 2), torch.utils.flop_counter

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_stats(arch: Architecture, model: nn.Module | None = None) -> ModelStats:
    """Parameters and FLOPs of ``arch`` at ``1 x in_chans x resolution x resolution``.

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls; a
    multiply-add is 2 FLOPs), not by code of ours.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = model if model is not None else build_model(arch)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, arch.in_chans, arch.resolution, arch.resolution)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return ModelStats(params=count_params(model), flops=int(counter.get_total_flops()))


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int, int], opset: int = 17,
                dtype: torch.dtype = torch.float32) -> Path:
    """Export ``model`` (in eval mode) to ONNX with a fixed input shape ``N x C x H x W``.

    Uses the TorchScript-based exporter: measured here, it exports a gpunet-tiny network in 0.12 s where
    the torch.export-based exporter takes 3.3 s, and the latency profiler exports every layer it measures.
    ``dtype`` is the graph's type, weights and input alike (``torch.float16`` for a strongly typed FP16 TensorRT
    engine); the model is converted to it in place. Returns the written path.
    """
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(dtype)
    x = torch.randn(*input_shape, dtype=dtype)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], opset_version=opset, dynamo=False)
    return path
