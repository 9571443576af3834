"""Search spaces from presets and user overrides (``NASSearch.spec.searchSpace``): :func:`load_space`.

A preset is a YAML file in ``gpunet/presets/`` (``gpunet`` is Table 1 exactly; ``gpunet-small`` and
``gpunet-tiny`` keep its structure with smaller ranges, for CPU runs; ``gpunet-x`` and ``gpunet-x-tiny`` add
EfficientNet-X's space-to-depth stem and searched fused-IRB/IRB stages, see :mod:`gpunet.space`). Overrides change any part of it; keys
accept camelCase or snake_case, and every error names the field (e.g. ``searchSpace.stages[4].filters``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import yaml

from ..arch import ACTIVATIONS, BLOCK_TYPES, NUM_STAGES, SPACE_TO_DEPTH_BLOCK
from ..errors import SpaceError
from .encoding import SearchSpace, StageRange

_TOP_KEYS = {
    "name": "name",
    "source": "source",
    "preset": "preset",
    "resolution": "resolution",
    "resolutions": "resolution",
    "inchans": "in_chans",
    "in_chans": "in_chans",
    "inchannels": "in_chans",
    "numclasses": "num_classes",
    "num_classes": "num_classes",
    "headchannels": "head_channels",
    "head_channels": "head_channels",
    "stem": "stem",
    "head": "head",
    "droppathrate": "drop_path_rate",
    "drop_path_rate": "drop_path_rate",
    "stages": "stages",
}
_STAGE_KEYS = ("block", "stride", "filters", "kernel", "layers", "expansion", "se", "act")
#: Table 1's block type of each stage, and the block types a stage may search among (EfficientNet-X, Li et al.
#: CVPR 2021: a space-to-depth stem; hybrid stages of fused IRBs and IRBs). The types of a stage share their
#: shape rule and digits (:data:`gpunet.arch.BLOCKS`), so a block digit changes no other digit's meaning.
TABLE1_BLOCKS: tuple[str, ...] = ("conv", "conv", "fused_irb", "fused_irb", "irb", "irb", "irb", "irb")
STAGE_BLOCK_CHOICES: tuple[tuple[str, ...], ...] = (("conv", "s2d_conv"), ("conv",)) + (("fused_irb", "irb"),) * 6


def preset_names() -> list[str]:
    """Names of the built-in presets (``gpunet``, ``gpunet-small``, ``gpunet-tiny``)."""
    files = resources.files("gpunet").joinpath("presets").iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def _preset_dict(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise SpaceError("preset", name, preset_names())
    text = resources.files("gpunet").joinpath("presets", f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def _norm_key(key: Any) -> str:
    return re.sub(r"[-_]", "", str(key)).lower() if str(key) not in _TOP_KEYS else str(key)


def _int_range(value: Any, where: str, *, minimum: int = 0) -> tuple[int, ...]:
    """A range given as a list of ints, a single int, or ``{min, max, step}`` (inclusive)."""
    if isinstance(value, Mapping):
        extra = set(value) - {"min", "max", "step"}
        if extra or "min" not in value or "max" not in value:
            raise SpaceError(where, dict(value), "a list of integers or {min, max, step}")
        lo, hi, step = value["min"], value["max"], value.get("step", 1)
        for part, v in (("min", lo), ("max", hi), ("step", step)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpaceError(f"{where}.{part}", v, "an integer")
        if step < 1:
            raise SpaceError(f"{where}.step", step, "an integer >= 1")
        if hi < lo:
            raise SpaceError(f"{where}.max", hi, f"an integer >= min ({lo})")
        values: list[Any] = list(range(lo, hi + 1, step))
    elif isinstance(value, int) and not isinstance(value, bool):
        values = [value]
    elif isinstance(value, (list, tuple)) and value:
        values = list(value)
    else:
        raise SpaceError(where, value, "a non-empty list of integers or {min, max, step}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise SpaceError(where, v, f"integers >= {minimum}")
    return tuple(sorted(set(values)))


def _choice_range(value: Any, where: str, allowed: Sequence[Any]) -> tuple[Any, ...]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise SpaceError(where, value, tuple(allowed), reason="empty")
    for v in values:
        if v not in allowed:
            raise SpaceError(where, v, tuple(allowed))
    return tuple(sorted(set(values), key=list(allowed).index))


def _stage_range(raw: Mapping[str, Any], base: StageRange | None, where: str) -> StageRange:
    if not isinstance(raw, Mapping):
        raise SpaceError(where, raw, f"a mapping with keys {list(_STAGE_KEYS)}")
    unknown = set(raw) - set(_STAGE_KEYS)
    if unknown:
        raise SpaceError(f"{where}.{sorted(unknown)[0]}", raw[sorted(unknown)[0]], list(_STAGE_KEYS), reason="unknown key")
    fields: dict[str, Any] = {}
    if "block" in raw:
        fields["blocks"] = _choice_range(raw["block"], f"{where}.block", BLOCK_TYPES)
        fields["block"] = fields["blocks"][0]
    if "stride" in raw:
        fields["stride"] = _choice_range(raw["stride"], f"{where}.stride", (1, 2))[0]
    for key, minimum in (("filters", 1), ("layers", 0), ("expansion", 1)):
        if key in raw:
            fields[key] = _int_range(raw[key], f"{where}.{key}", minimum=minimum)
    if "kernel" in raw:
        fields["kernel"] = _int_range(raw["kernel"], f"{where}.kernel", minimum=1)
        even = [k for k in fields["kernel"] if k % 2 == 0]
        if even:
            raise SpaceError(f"{where}.kernel", even[0], "odd kernel sizes (e.g. 3, 5)")
    if "se" in raw:
        fields["se"] = _choice_range(raw["se"], f"{where}.se", (0, 1))
    if "act" in raw:
        fields["act"] = _choice_range(raw["act"], f"{where}.act", ACTIVATIONS)
    if base is not None:
        return replace(base, **fields)
    for key in ("block", "stride"):
        if key not in fields:
            raise SpaceError(f"{where}.{key}", None, "a value (required for a new stage)")
    fields.setdefault("filters", (1,))
    return StageRange(**fields)


def _merge(base: dict[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Apply a (camelCase or snake_case) override mapping onto a normalised space dict."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        canon = _TOP_KEYS.get(_norm_key(key))
        if canon is None:
            raise SpaceError(f"{where}.{key}", value, sorted(set(_TOP_KEYS.values())), reason="unknown key")
        if canon == "stages":
            items: Iterable[tuple[Any, Any]]
            if isinstance(value, Mapping):
                items = value.items()
            elif isinstance(value, list):
                if len(value) != NUM_STAGES:
                    raise SpaceError(f"{where}.stages", len(value), f"{NUM_STAGES} stages, or a mapping {{index: fields}}")
                items = enumerate(value)
            else:
                raise SpaceError(f"{where}.stages", value, "a list of 8 stages or a mapping {index: fields}")
            stages = dict(enumerate(out.get("stages", [None] * NUM_STAGES)))
            for idx, fields in items:
                try:
                    s = int(idx)
                except (TypeError, ValueError):
                    raise SpaceError(f"{where}.stages", idx, list(range(NUM_STAGES)), reason="stage index") from None
                if not 0 <= s < NUM_STAGES:
                    raise SpaceError(f"{where}.stages", s, list(range(NUM_STAGES)), reason="stage index")
                stages[s] = {**(stages[s] or {}), **fields} if isinstance(fields, Mapping) else fields
            out["stages"] = [stages[i] for i in range(NUM_STAGES)]
        elif canon in ("stem", "head") and isinstance(value, Mapping):
            out[canon] = {**out.get(canon, {}), **value}
        else:
            out[canon] = value
    return out


def _build(data: dict[str, Any], where: str) -> SearchSpace:
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or len(stages_raw) != NUM_STAGES:
        raise SpaceError(f"{where}.stages", stages_raw, f"{NUM_STAGES} stages (Table 1)")
    stages = [_stage_range(raw, None, f"{where}.stages[{i}]") for i, raw in enumerate(stages_raw)]
    for i, (stage, block, choices) in enumerate(zip(stages, TABLE1_BLOCKS, STAGE_BLOCK_CHOICES)):
        if block not in stage.blocks:
            raise SpaceError(f"{where}.stages[{i}].block", list(stage.blocks), f"{block!r} among the choices",
                             reason="Table 1 fixes each stage's block type; other types may only be added as choices")
        other = [b for b in stage.blocks if b not in choices]
        if other:
            raise SpaceError(f"{where}.stages[{i}].block", other[0], choices, reason=f"stage {i} may choose among these")
        if "s2d_conv" in stage.blocks and stage.stride != SPACE_TO_DEPTH_BLOCK:
            raise SpaceError(f"{where}.stages[{i}].stride", stage.stride, (SPACE_TO_DEPTH_BLOCK,),
                             reason="a space-to-depth stem downsamples by its block size")
        stages[i] = replace(stage, block=block)  # Table 1's type: the block of a stage whose type is not searched
    if stages[0].layers != (1,):
        raise SpaceError(f"{where}.stages[0].layers", list(stages[0].layers), [1], reason="stage 0 is one stem convolution")
    if 0 in stages[1].layers:
        raise SpaceError(f"{where}.stages[1].layers", 0, "layers >= 1 for stage 1 (Table 1)")
    stem = data.get("stem", {}) or {}
    head = data.get("head", {}) or {}
    if not isinstance(stem, Mapping) or set(stem) - {"kernel", "act"}:
        raise SpaceError(f"{where}.stem", stem, "a mapping with keys kernel, act")
    if not isinstance(head, Mapping) or set(head) - {"channels", "act", "dropout"}:
        raise SpaceError(f"{where}.head", head, "a mapping with keys channels, act, dropout")
    head_channels = data.get("head_channels", head.get("channels", 1792))

    def positive_int(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpaceError(f"{where}.{name}", value, "a positive integer")
        return value

    def rate(value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise SpaceError(f"{where}.{name}", value, "a number in [0, 1)")
        return float(value)

    resolution = _int_range(data.get("resolution"), f"{where}.resolution", minimum=8)
    odd = [r for r in resolution if r % SPACE_TO_DEPTH_BLOCK]
    if "s2d_conv" in stages[0].blocks and odd:
        raise SpaceError(f"{where}.resolution", odd[0], f"multiples of {SPACE_TO_DEPTH_BLOCK}",
                         reason="the space-to-depth stem needs them")
    stem_kernel = positive_int(stem.get("kernel", 3), "stem.kernel")
    if stem_kernel % 2 == 0:
        raise SpaceError(f"{where}.stem.kernel", stem_kernel, "an odd kernel size")
    return SearchSpace(
        name=str(data.get("name", "custom")),
        source=str(data.get("source", "")),
        resolution=resolution,
        stages=tuple(stages),
        head_channels=positive_int(head_channels, "headChannels"),
        num_classes=positive_int(data.get("num_classes", 1000), "numClasses"),
        in_chans=positive_int(data.get("in_chans", 3), "inChans"),
        stem_kernel=stem_kernel,
        stem_act=_choice_range(stem.get("act", "swish"), f"{where}.stem.act", ACTIVATIONS)[0],
        head_act=_choice_range(head.get("act", "relu"), f"{where}.head.act", ACTIVATIONS)[0],
        dropout=rate(head.get("dropout", 0.2), "head.dropout"),
        drop_path_rate=rate(data.get("drop_path_rate", 0.2), "dropPathRate"),
    )


def load_space(spec: str | Mapping[str, Any] | SearchSpace | None = None, **overrides: Any) -> SearchSpace:
    """Build a search space from a preset name or an override mapping (``NASSearch.spec.searchSpace``).

    Args:
        spec: a preset name (``"gpunet"``, ``"gpunet-small"``, ``"gpunet-tiny"``), a mapping that may name
            a ``preset`` (default ``gpunet``) and override any part of it, or a ready :class:`SearchSpace`.
            Override keys accept camelCase or snake_case: ``resolution``, ``headChannels``, ``numClasses``,
            ``inChans``, ``stem``, ``head``, ``dropPathRate`` and ``stages``, the latter either a full list of
            8 stages or a mapping ``{stage index: {filters, kernel, layers, expansion, se, act, stride}}``.
        **overrides: more overrides, applied after ``spec``.

    Returns:
        The validated :class:`SearchSpace`.

    Raises:
        SpaceError: an unknown preset or key, or a malformed range; the message names the field
            (e.g. ``searchSpace.stages[4].filters``), the value and what was expected.
    """
    if isinstance(spec, SearchSpace) and not overrides:
        return spec
    if spec is None or isinstance(spec, str):
        mapping: Mapping[str, Any] = {"preset": spec or "gpunet"}
    elif isinstance(spec, Mapping):
        mapping = spec
    else:
        raise SpaceError("searchSpace", spec, "a preset name or a mapping")
    preset = mapping.get("preset", "gpunet")
    base = _merge({}, _preset_dict(str(preset)), f"preset {preset}")
    rest = {k: v for k, v in mapping.items() if k != "preset"}
    merged = _merge(base, rest, "searchSpace")
    merged = _merge(merged, overrides, "searchSpace")
    if "name" not in rest and (rest or overrides):
        merged["name"] = f"{preset}+overrides"
    return _build(merged, "searchSpace")
