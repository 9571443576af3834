"""Interop with NVIDIA's published GPUNet layer lists.

NVIDIA/DeepLearningExamples ships each released GPUNet as a JSON list of layers
(``PyTorch/Classification/GPUNet/configs/batch1/GV100/*.json``)::

    [{"layer_type": "data", "img_resolution": 384, "distill": false},
     {"layer_type": "head", "num_in_channels": 3, "num_out_channels": 32},       # the stem, stage 0
     {"layer_type": "conv" | "fused_irb" | "irb", "num_in_channels", "num_out_channels", "stride",
      "kernel_size", "act": "relu" | "swish", "expansion", "use_se", "stage"}, ...
     {"layer_type": "tail", "num_in_channels", "num_out_channels": 1280, "num_classes": 1000}]

Note the naming clash: NVIDIA's ``head`` is our stem and its ``tail`` is our head. The stem's activation
is absent from the files; NVIDIA's builder defaults it to Swish, and so do we. NVIDIA's stem always has
stride 2; a stem of ours with another stride (the CPU presets) is written with an extra ``"stride"`` key
on the ``head`` entry, which we read back (NVIDIA's builder would ignore it). Distilled models
(``"distill": true``) use other blocks and are not part of this family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .arch import ACTIVATIONS, NUM_STAGES, Architecture, StageConfig
from .errors import SpaceError

#: The layer types of NVIDIA's layer lists (Table 1's; EfficientNet-X's ``s2d_conv`` has no NVIDIA form).
NVIDIA_BLOCK_TYPES: tuple[str, ...] = ("conv", "fused_irb", "irb")

_STAGE_KEYS = ("num_out_channels", "kernel_size", "act", "expansion", "use_se")


def from_nvidia(layers: list[dict[str, Any]], *, stem_act: str = "swish", name: str = "") -> Architecture:
    """Read an NVIDIA GPUNet layer list into an :class:`Architecture`.

    Raises:
        SpaceError: a malformed list, or one that our stage-shared layout cannot express (layers of one
            stage with different configurations, stages out of order, a distilled model); the message says
            which entry and field.
    """
    if not isinstance(layers, list) or not layers:
        raise SpaceError("layer list", type(layers).__name__, "a non-empty JSON list of layer objects")
    data = layers[0]
    if not isinstance(data, dict) or data.get("layer_type") != "data":
        raise SpaceError("layers[0].layer_type", data.get("layer_type") if isinstance(data, dict) else data, ("data",))
    if data.get("distill"):
        raise SpaceError("layers[0].distill", True, (False,), reason="distilled GPUNets use other blocks, outside this family")
    resolution = data.get("img_resolution")
    tail = layers[-1]
    if not isinstance(tail, dict) or tail.get("layer_type") != "tail":
        raise SpaceError(f"layers[{len(layers) - 1}].layer_type", tail.get("layer_type") if isinstance(tail, dict) else tail, ("tail",))
    stem = layers[1] if len(layers) > 1 else {}
    if stem.get("layer_type") != "head":
        raise SpaceError("layers[1].layer_type", stem.get("layer_type"), ("head",), reason="the stem (NVIDIA calls it 'head')")

    grouped: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    last_stage = 0
    for i, layer in enumerate(layers[2:-1], start=2):
        kind = layer.get("layer_type")
        if kind not in NVIDIA_BLOCK_TYPES:
            raise SpaceError(f"layers[{i}].layer_type", kind, NVIDIA_BLOCK_TYPES)
        stage = layer.get("stage")
        if not isinstance(stage, int) or not 1 <= stage < NUM_STAGES:
            raise SpaceError(f"layers[{i}].stage", stage, list(range(1, NUM_STAGES)))
        if stage < last_stage:
            raise SpaceError(f"layers[{i}].stage", stage, f">= {last_stage}", reason="stages must be in order")
        last_stage = stage
        grouped.setdefault(stage, []).append((i, layer))

    stages = [
        StageConfig(block="conv", stride=_int(stem, "stride", 1) if "stride" in stem else 2,
                    filters=_int(stem, "num_out_channels", 1), kernel=3, layers=1, act=stem_act)
    ]
    default_blocks = ("conv", "conv", "fused_irb", "fused_irb", "irb", "irb", "irb", "irb")
    default_strides = (2, 1, 2, 2, 2, 1, 2, 1)
    for s in range(1, NUM_STAGES):
        entries = grouped.get(s, [])
        if not entries:
            # A skipped stage: Table 1's block type and stride, the previous stage's width.
            prev = stages[-1]
            stages.append(StageConfig(default_blocks[s], default_strides[s], prev.filters, 3, 0, 1 if s < 2 else 2, False, "relu"))
            continue
        i0, first = entries[0]
        for i, layer in entries[1:]:
            for key in _STAGE_KEYS + ("layer_type",):
                if layer.get(key) != first.get(key):
                    raise SpaceError(
                        f"layers[{i}].{key}", layer.get(key), (first.get(key),),
                        reason=f"layers of stage {s} must share their configuration (GPUNet paper 3.1)",
                    )
            if _int(layer, "stride", i) != 1:
                raise SpaceError(f"layers[{i}].stride", layer.get("stride"), (1,), reason="only a stage's first layer strides")
        act = first.get("act")
        if act not in ACTIVATIONS:
            raise SpaceError(f"layers[{i0}].act", act, ACTIVATIONS)
        block = first["layer_type"]
        stages.append(
            StageConfig(
                block=block,
                stride=_int(first, "stride", i0),
                filters=_int(first, "num_out_channels", i0),
                kernel=_int(first, "kernel_size", i0),
                layers=len(entries),
                expansion=_int(first, "expansion", i0) if block != "conv" else 1,
                se=bool(first.get("use_se", False)) if block != "conv" else False,
                act=act,
            )
        )
    arch = Architecture(
        resolution=_int(data, "img_resolution", 0) if resolution is not None else 224,
        stages=tuple(stages),
        head_channels=_int(tail, "num_out_channels", len(layers) - 1),
        num_classes=_int(tail, "num_classes", len(layers) - 1),
        in_chans=_int(stem, "num_in_channels", 1),
        name=name,
    )
    _check_channel_chain(layers, arch)
    return arch


def _int(layer: dict[str, Any], key: str, index: int) -> int:
    value = layer.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpaceError(f"layers[{index}].{key}", value, "a positive integer")
    return value


def _check_channel_chain(layers: list[dict[str, Any]], arch: Architecture) -> None:
    """Each layer's num_in_channels must equal the previous layer's output channels."""
    expected = [spec.in_chs for spec in arch.layer_specs()]
    for i, (layer, chans) in enumerate(zip(layers[1:], expected), start=1):
        if layer.get("num_in_channels") != chans:
            raise SpaceError(f"layers[{i}].num_in_channels", layer.get("num_in_channels"), (chans,), reason="breaks the channel chain")


def to_nvidia(arch: Architecture) -> list[dict[str, Any]]:
    """Write an :class:`Architecture` as an NVIDIA GPUNet layer list (readable by NVIDIA's builder)."""
    specs = arch.layer_specs()
    unknown = [s for s in specs[:-1] if s.type not in NVIDIA_BLOCK_TYPES]
    if unknown:
        raise SpaceError(f"stage {unknown[0].stage} block", unknown[0].type, NVIDIA_BLOCK_TYPES,
                         reason="NVIDIA's layer lists have no such layer (EfficientNet-X's space-to-depth stem)")
    out: list[dict[str, Any]] = [{"layer_type": "data", "img_resolution": arch.resolution, "distill": False}]
    stem = specs[0]
    out.append({"layer_type": "head", "num_in_channels": stem.in_chs, "num_out_channels": stem.out_chs})
    if stem.stride != 2:
        out[-1]["stride"] = stem.stride
    for spec in specs[1:-1]:
        entry: dict[str, Any] = {
            "layer_type": spec.type,
            "num_in_channels": spec.in_chs,
            "num_out_channels": spec.out_chs,
            "stride": spec.stride,
        }
        if spec.type != "conv":
            entry["expansion"] = spec.expansion
        entry.update(kernel_size=spec.kernel, act=spec.act)
        if spec.type != "conv":
            entry["use_se"] = spec.se
        entry["stage"] = spec.stage
        out.append(entry)
    head = specs[-1]
    out.append({"layer_type": "tail", "num_in_channels": head.in_chs, "num_out_channels": head.out_chs, "num_classes": head.num_classes})
    return out


def load_architecture(source: str | Path) -> Architecture:
    """Read an architecture from a JSON file in our format or NVIDIA's (told apart by shape)."""
    path = Path(source)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpaceError("architecture file", str(path), "an existing JSON file") from None
    except json.JSONDecodeError as exc:
        raise SpaceError("architecture file", str(path), "valid JSON", reason=str(exc)) from None
    if isinstance(data, list):
        return from_nvidia(data, name=path.stem)
    if isinstance(data, dict):
        return Architecture.from_dict(data)
    raise SpaceError("architecture file", type(data).__name__, "a JSON object (our format) or list (NVIDIA's)")
