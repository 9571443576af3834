"""A concrete network of the GPUNet family, and the per-layer description the latency table keys on.

An :class:`Architecture` is independent of any search space: it is what a 41-integer vector decodes to
(:meth:`gpunet.space.SearchSpace.decode`), what NVIDIA's published layer lists describe
(:mod:`gpunet.nvidia`), and what :func:`gpunet.model.build_model` turns into an ``nn.Module``.
This module imports no torch, so latency estimates and the controller can use it cheaply.

Layout (GPUNet paper, Table 1): stage 0 is the stem convolution, stage 1 more convolutions, stages 2-3
fused inverted residual blocks (fused IRB, timm ``EdgeResidual``), stages 4-7 inverted residual blocks
(IRB, timm ``InvertedResidual``); then the head: 1x1 convolution + BN + activation, global average pool,
dropout and a linear classifier. Layers of a stage share their configuration; the first layer of a
stage carries the stage's stride and changes the channel count.

Layer shapes are derived in one place, :func:`stage_layers` and :func:`head_layer`, from per-block-type
rules (:data:`BLOCKS`). :meth:`Architecture.layer_specs` (hence the model builder), the latency keys
(:mod:`gpunet.latency.keys`) and the vectorised estimator (:class:`gpunet.sampling.LayerGrid`) all use them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import SpaceError

#: Activation names, in the order the vector's activation digit indexes them (Table 1: [R, S]).
ACTIVATIONS: tuple[str, ...] = ("relu", "swish")


def conv_out_size(size: Any, stride: Any) -> Any:
    """Spatial size after a convolution with 'same'-style symmetric padding ``k // 2`` (odd ``k``): ``ceil(size / stride)``.

    Elementwise on numpy arrays.
    """
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class BlockType:
    """The shape rules of one block type: which stage attributes reach its layers, and its output size.

    :data:`BLOCKS` holds one per block type; a new block type (e.g. a space-to-depth stem, EfficientNet-X) is
    added there, and :func:`stage_layers` (hence the model builder, the latency keys and the vectorised
    estimator) follows. :mod:`gpunet.model` then needs a builder for its module.

    Attributes:
        name: the layer type, as in :class:`LayerSpec` and the latency keys.
        uses_expansion: the stage's expansion ratio reaches the layer (otherwise the layer's is 1).
        uses_se: the stage's squeeze-excitation flag reaches the layer (otherwise SE is off).
    """

    name: str
    uses_expansion: bool
    uses_se: bool

    def out_size(self, size: Any, stride: Any) -> Any:
        """Output height (or width) for an input of ``size`` pixels; elementwise on numpy arrays."""
        return conv_out_size(size, stride)


#: The block types of a stage, by name: Table 1's three (GPUNet paper), and EfficientNet-X's space-to-depth
#: stem (Li et al., CVPR 2021, papers 001/002), ``s2d_conv``: a space-to-depth rearrangement with block size
#: :data:`SPACE_TO_DEPTH_BLOCK` (``N x C x H x W -> N x 4C x H/2 x W/2``, ``torch.nn.PixelUnshuffle``) followed by
#: a stride-1 convolution + BN + activation. Its ``stride`` is the total downsampling, so it must be 2 and the
#: input size even; it then has the output shape of a stride-2 ``conv`` stem and can replace one.
BLOCKS: dict[str, BlockType] = {
    "conv": BlockType("conv", uses_expansion=False, uses_se=False),
    "fused_irb": BlockType("fused_irb", uses_expansion=True, uses_se=True),  # timm EdgeResidual
    "irb": BlockType("irb", uses_expansion=True, uses_se=True),  # timm InvertedResidual
    "s2d_conv": BlockType("s2d_conv", uses_expansion=False, uses_se=False),  # PixelUnshuffle(2) + timm ConvBnAct
}
#: Block size of the space-to-depth stem (EfficientNet-X uses 2); an ``s2d_conv`` layer's stride equals it.
SPACE_TO_DEPTH_BLOCK = 2
#: Block types of a stage.
BLOCK_TYPES: tuple[str, ...] = tuple(BLOCKS)
#: Layer types of :class:`LayerSpec` (the stem is a ``conv`` layer of stage 0).
LAYER_TYPES: tuple[str, ...] = BLOCK_TYPES + ("head",)
#: Number of stages (Table 1, stages 0-7).
NUM_STAGES = 8
ARCH_FORMAT = "gpunet-arch/v1"


@dataclass(frozen=True)
class StageConfig:
    """The shared configuration of the layers of one stage.

    Attributes:
        block: ``"conv"``, ``"fused_irb"``, ``"irb"`` or ``"s2d_conv"`` (space-to-depth stem, see :data:`BLOCKS`).
        stride: stride of the stage's first layer (1 or 2; an ``s2d_conv`` stage: 2).
        filters: output channels of every layer of the stage.
        kernel: kernel size (3 or 5; the depthwise kernel in an IRB, the expansion kernel in a fused IRB).
        layers: number of layers (0 for a skipped stage).
        expansion: expansion ratio of (fused) IRBs; 1 for convolutions.
        se: squeeze-excitation on or off.
        act: ``"relu"`` or ``"swish"``.
    """

    block: str
    stride: int
    filters: int
    kernel: int
    layers: int
    expansion: int = 1
    se: bool = False
    act: str = "relu"

    def __post_init__(self) -> None:
        if self.block not in BLOCK_TYPES:
            raise SpaceError("block", self.block, BLOCK_TYPES)
        if self.act not in ACTIVATIONS:
            raise SpaceError("act", self.act, ACTIVATIONS)
        if self.stride not in (1, 2):
            raise SpaceError("stride", self.stride, (1, 2))
        if self.block == "s2d_conv" and self.stride != SPACE_TO_DEPTH_BLOCK:
            raise SpaceError("stride", self.stride, (SPACE_TO_DEPTH_BLOCK,),
                             reason="an s2d_conv stage downsamples by its space-to-depth block size")
        for name in ("filters", "kernel", "expansion"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpaceError(name, value, "a positive integer")
        if self.kernel % 2 == 0:
            raise SpaceError("kernel", self.kernel, "an odd kernel size")
        if not isinstance(self.layers, int) or self.layers < 0:
            raise SpaceError("layers", self.layers, "an integer >= 0")


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a network, with every attribute that determines its latency (paper 3.2).

    The layers of a network come from :func:`stage_layers` and :func:`head_layer`, the one derivation of layer
    shapes. In the vectorised estimator (:mod:`gpunet.sampling.grid`) the numeric fields hold numpy arrays (one
    value per network or per grid cell) and ``act`` an index into :data:`ACTIVATIONS`; everywhere else they are
    plain values.

    Attributes:
        type: ``"conv"``, ``"fused_irb"``, ``"irb"``, ``"s2d_conv"`` or ``"head"``.
        input_shape: the input tensor shape ``N x C x H x W``.
        out_chs: output channels (for ``head``: the width of the 1x1 head convolution).
        kernel, stride, expansion, se, act: as in :class:`StageConfig` (head: kernel 1, stride 1).
        num_classes: classifier outputs (``head`` only; 0 otherwise).
        stage: stage index 0-7, or 8 for the head.
    """

    type: str
    input_shape: tuple[int, int, int, int]
    out_chs: int
    kernel: int = 1
    stride: int = 1
    expansion: int = 1
    se: bool = False
    act: str = "relu"
    num_classes: int = 0
    stage: int = 0

    @property
    def in_chs(self) -> int:
        return self.input_shape[1]

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """``N x C x H x W`` after the layer (``N x num_classes x 1 x 1`` for the head)."""
        n, _, h, w = self.input_shape
        if self.type == "head":
            return (n, self.num_classes, 1, 1)
        block = BLOCKS[self.type]
        return (n, self.out_chs, block.out_size(h, self.stride), block.out_size(w, self.stride))

    def describe(self) -> str:
        """A stable, human-readable form, e.g. ``irb k5 e4 se1 swish s2 1x48x14x14->64`` (see :func:`layer_text`)."""
        return layer_text(self.type, *self.input_shape, self.out_chs, self.kernel, self.stride, self.expansion,
                          self.se, self.act, self.num_classes)


def layer_text(type: str, n: int, c: int, h: int, w: int, out_chs: int, kernel: int, stride: int, expansion: int,
               se: bool | int, act: str, num_classes: int) -> str:
    """The canonical text of a layer, e.g. ``irb k5 e4 se1 swish s2 1x48x14x14->64`` (``... cls1000`` for a head).

    The latency table's keys are this text plus the target (:func:`gpunet.latency.keys.key_text`), and their
    digests are hashes of it: changing the format invalidates every stored table.
    """
    text = f"{type} k{kernel} e{expansion} se{int(se)} {act} s{stride} {n}x{c}x{h}x{w}->{out_chs}"
    return f"{text} cls{num_classes}" if type == "head" else text


def stage_layers(block: str, stride: int, in_chs: Any, size: Any, filters: Any, kernel: Any, expansion: Any, se: Any,
                 act: Any, *, batch_size: int = 1, stage: int = 0) -> tuple[LayerSpec, LayerSpec]:
    """The first and the repeated layer of a stage: the one derivation of layer shapes.

    The first layer takes the stage's input (``in_chs`` channels, ``size x size`` pixels) and carries the
    stage's stride; layers 2.. of the stage take the first layer's output at stride 1 and share its
    configuration (Table 1). Attributes the block type does not use (:class:`BlockType`) are normalised
    (expansion 1, SE off), so that equal layers get equal latency keys.

    Every argument after ``stride`` may be a numpy array (one value per network or grid cell); the result
    then holds arrays, elementwise (:mod:`gpunet.sampling` does this for a million networks at once).

    Args:
        block: the stage's block type, a key of :data:`BLOCKS`.
        stride: the stage's stride (1 or 2).
        in_chs, size: channels and height (= width) of the stage's input.
        filters, kernel, expansion, se, act: the stage's configuration, as in :class:`StageConfig`.
        batch_size: the ``N`` of the input shapes.
        stage: the stage index, recorded in the specs.

    Returns:
        ``(first, repeat)``; the stage's output shape is ``first.output_shape`` (when it has layers).
    """
    rule = BLOCKS[block]
    expansion = expansion if rule.uses_expansion else 1
    se = se if rule.uses_se else False
    out_size = rule.out_size(size, stride)
    first = LayerSpec(block, (batch_size, in_chs, size, size), filters, kernel, stride, expansion, se, act, 0, stage)
    repeat = LayerSpec(block, (batch_size, filters, out_size, out_size), filters, kernel, 1, expansion, se, act, 0, stage)
    return first, repeat


def head_layer(in_chs: Any, size: Any, channels: int, act: Any, num_classes: int, *, batch_size: int = 1) -> LayerSpec:
    """The head (1x1 convolution to ``channels`` + BN + activation, pooling, classifier) on the last stage's output.

    Like :func:`stage_layers`, ``in_chs``, ``size`` and ``act`` may be numpy arrays.
    """
    return LayerSpec("head", (batch_size, in_chs, size, size), channels, 1, 1, 1, False, act, num_classes, NUM_STAGES)


@dataclass(frozen=True)
class Architecture:
    """A concrete GPUNet-family network.

    Attributes:
        resolution: input height and width in pixels.
        stages: eight :class:`StageConfig`, stage 0 (stem) to stage 7.
        head_channels: width of the head's 1x1 convolution (Table 1: 1792; released GPUNets: 1280).
        num_classes: classifier outputs.
        in_chans: input channels (3 for RGB, 1 for grey).
        head_act: activation after the head convolution.
        dropout: dropout rate before the classifier.
        drop_path_rate: stochastic-depth rate of the last block; it grows linearly from 0 over the blocks.
    """

    resolution: int
    stages: tuple[StageConfig, ...]
    head_channels: int = 1792
    num_classes: int = 1000
    in_chans: int = 3
    head_act: str = "relu"
    dropout: float = 0.2
    drop_path_rate: float = 0.2
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if len(self.stages) != NUM_STAGES:
            raise SpaceError("stages", len(self.stages), f"exactly {NUM_STAGES} stages (Table 1)")
        if self.stages[0].layers != 1:
            raise SpaceError("stage 0 layers", self.stages[0].layers, (1,), reason="stage 0 is the single stem convolution")
        if not isinstance(self.resolution, int) or self.resolution < 8:
            raise SpaceError("resolution", self.resolution, "an integer >= 8")
        for name in ("head_channels", "num_classes", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpaceError(name, value, "a positive integer")
        if self.head_act not in ACTIVATIONS:
            raise SpaceError("head_act", self.head_act, ACTIVATIONS)
        if sum(s.layers for s in self.stages[1:]) == 0:
            raise SpaceError("stages", 0, "at least one layer after the stem")

    # --- layers ----------------------------------------------------------------------------
    def layer_specs(self, batch_size: int = 1) -> list[LayerSpec]:
        """The network as a list of layers, in forward order: stem, blocks, head.

        Args:
            batch_size: the ``N`` of every layer's input shape.

        Returns:
            One :class:`LayerSpec` per stem/block/head layer; a stage with 0 layers contributes none.
        """
        specs: list[LayerSpec] = []
        chans, size = self.in_chans, self.resolution
        for index, stage in enumerate(self.stages):
            if stage.layers == 0:
                continue
            if stage.block == "s2d_conv" and size % SPACE_TO_DEPTH_BLOCK:
                raise SpaceError(f"stage {index} input size", size, f"a multiple of {SPACE_TO_DEPTH_BLOCK}",
                                 reason="space-to-depth needs an input size divisible by its block size")
            first, repeat = stage_layers(stage.block, stage.stride, chans, size, stage.filters, stage.kernel,
                                         stage.expansion, stage.se, stage.act, batch_size=batch_size, stage=index)
            specs += [first] + [repeat] * (stage.layers - 1)
            _, chans, size, _ = first.output_shape
        specs.append(head_layer(chans, size, self.head_channels, self.head_act, self.num_classes, batch_size=batch_size))
        return specs

    @property
    def num_layers(self) -> int:
        """Number of layers, stem and head included."""
        return sum(s.layers for s in self.stages) + 1

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Our JSON format (``format: gpunet-arch/v1``)."""
        # Field by field rather than dataclasses.asdict (a recursive deep copy): every training assignment
        # carries this JSON.
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["stages"] = [{f.name: getattr(s, f.name) for f in dataclasses.fields(s)} for s in self.stages]
        for stage in data["stages"]:
            stage["se"] = int(stage["se"])
        if not data["name"]:
            data.pop("name")
        return {"format": ARCH_FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Architecture":
        """Read our JSON format; raises :class:`SpaceError` naming a missing or bad field."""
        if data.get("format", ARCH_FORMAT) != ARCH_FORMAT:
            raise SpaceError("format", data.get("format"), (ARCH_FORMAT,))
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - known - {"format", "vector"}
        if extra:
            raise SpaceError("architecture", sorted(extra), sorted(known), reason="unknown keys")
        if "resolution" not in data or "stages" not in data:
            raise SpaceError("architecture", sorted(data), "keys 'resolution' and 'stages'", reason="missing key")
        stage_fields = {f.name for f in dataclasses.fields(StageConfig)}
        stages = []
        for i, raw in enumerate(data["stages"]):
            if not isinstance(raw, dict) or set(raw) - stage_fields:
                raise SpaceError(f"stages[{i}]", raw, sorted(stage_fields))
            raw = dict(raw)
            raw["se"] = bool(raw.get("se", False))
            try:
                stages.append(StageConfig(**raw))
            except TypeError as exc:
                raise SpaceError(f"stages[{i}]", raw, sorted(stage_fields), reason=str(exc)) from None
            except SpaceError as exc:
                raise SpaceError(f"stages[{i}].{exc.field}", exc.value, exc.allowed) from None
        fields = {k: v for k, v in data.items() if k in known and k != "stages"}
        return cls(stages=tuple(stages), **fields)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)
