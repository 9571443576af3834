"""The GPUNet search space as data: presets, user overrides and the 41-integer encoding.

Source: GPUNet paper, section 3.1, Table 1 (the space) and Table 2 (the encoding).

Encoding
--------
A network is a vector of 41 integers in Table 2's order::

    [resolution,
     stage 0 filters,
     stage 1 kernel, stage 1 activation, stage 1 #layers,
     stage s filters, kernel, expansion, SE, activation, #layers   for s = 2 .. 7]

**Each digit holds the value itself, not an index into its range**: resolution 384, filters 112, kernel 5,
expansion 3, SE 0/1, #layers 6. The one exception is the activation, a name, which is stored as its index
in :data:`gpunet.arch.ACTIVATIONS` (0 = ReLU, 1 = Swish, Table 1's ``[R, S]`` order). Values make a
vector readable on its own and stable when a user narrows or widens a range; searchers that need
indices use :meth:`SearchSpace.to_indices` / :meth:`SearchSpace.from_indices`.

Stage 0 (the stem) always has one layer; its kernel and activation are fixed by the space because Table 2
encodes only its filters. Stage 1 shares stage 0's filters. A stage with 0 layers still carries its other
digits, so ``decode`` then ``encode`` round-trips every vector exactly.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, replace
from functools import cached_property
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from .arch import ACTIVATIONS, BLOCK_TYPES, NUM_STAGES, Architecture, StageConfig
from .errors import NotInSpaceError, SpaceError
from .sobol import sobol_chunks

VECTOR_LENGTH = 41
#: Per-stage digit attributes of stages 2-7, in Table 2 order.
BLOCK_DIGITS: tuple[str, ...] = ("filters", "kernel", "expansion", "se", "act", "layers")
STAGE1_DIGITS: tuple[str, ...] = ("kernel", "act", "layers")
_DIGIT_NAMES = {"filters": "filters", "kernel": "kernel", "expansion": "expansion", "se": "SE", "act": "activation", "layers": "#layers"}


@dataclass(frozen=True)
class StageRange:
    """The allowed values of one stage (a row of Table 1). Each field is a sorted tuple."""

    block: str
    stride: int
    filters: tuple[int, ...]
    kernel: tuple[int, ...] = (3,)
    layers: tuple[int, ...] = (1,)
    expansion: tuple[int, ...] = (1,)
    se: tuple[int, ...] = (0,)
    act: tuple[str, ...] = ("relu",)


@dataclass(frozen=True)
class Digit:
    """One position of the architecture vector: its index, human name and allowed values."""

    index: int
    field: str  # e.g. "stage 4 expansion"
    stage: int | None  # None for the resolution
    attr: str  # "resolution", "filters", "kernel", "expansion", "se", "act", "layers"
    values: tuple[int, ...]


@dataclass(frozen=True)
class SearchSpace:
    """A GPUNet-style search space: Table 1's eight stages with configurable ranges.

    Build one with :func:`load_space` (a preset plus overrides) rather than by hand.
    """

    name: str
    resolution: tuple[int, ...]
    stages: tuple[StageRange, ...]
    head_channels: int = 1792
    num_classes: int = 1000
    in_chans: int = 3
    stem_kernel: int = 3
    stem_act: str = "swish"
    head_act: str = "relu"
    dropout: float = 0.2
    drop_path_rate: float = 0.2
    source: str = ""

    # --- the digits ------------------------------------------------------------------------------
    @cached_property
    def digits(self) -> tuple[Digit, ...]:
        """The 41 digits in Table 2 order."""
        digits = [Digit(0, "resolution", None, "resolution", self.resolution)]
        digits.append(Digit(1, "stage 0 filters", 0, "filters", self.stages[0].filters))
        for stage, attrs in [(1, STAGE1_DIGITS)] + [(s, BLOCK_DIGITS) for s in range(2, NUM_STAGES)]:
            for attr in attrs:
                raw = getattr(self.stages[stage], attr)
                values = tuple(ACTIVATIONS.index(a) for a in raw) if attr == "act" else tuple(raw)
                digits.append(Digit(len(digits), f"stage {stage} {_DIGIT_NAMES[attr]}", stage, attr, values))
        assert len(digits) == VECTOR_LENGTH
        return tuple(digits)

    @property
    def cardinalities(self) -> list[int]:
        """Number of allowed values of each digit."""
        return [len(d.values) for d in self.digits]

    @property
    def num_vectors(self) -> int:
        """Number of distinct 41-integer vectors (an exact Python int)."""
        return math.prod(self.cardinalities)

    @property
    def num_networks(self) -> int:
        """Number of distinct networks: vectors that differ only in a 0-layer stage's digits are one network."""
        total = len(self.resolution) * len(self.stages[0].filters)
        for s in range(1, NUM_STAGES):
            digits = [d for d in self.digits if d.stage == s]
            other = math.prod(len(d.values) for d in digits if d.attr != "layers")
            layers = next(d for d in digits if d.attr == "layers").values
            total *= other * sum(1 for n in layers if n > 0) + (1 if 0 in layers else 0)
        return total

    # --- vector <-> architecture ---------------------------------------------------------------------
    def validate(self, vector: Sequence[Any]) -> list[int]:
        """Check a vector and return it as a list of ints.

        Raises:
            SpaceError: a wrong length, a non-integer digit, or a value outside its range; the message
                names the digit index, the field (e.g. "stage 4 expansion"), the value and the allowed values.
        """
        if isinstance(vector, (str, bytes)) or not isinstance(vector, Sequence) and not isinstance(vector, np.ndarray):
            raise SpaceError("vector", vector, f"a sequence of {VECTOR_LENGTH} integers")
        if len(vector) != VECTOR_LENGTH:
            raise SpaceError("vector length", len(vector), (VECTOR_LENGTH,), reason="Table 2 encodes a network in 41 integers")
        out = []
        for digit, value in zip(self.digits, vector):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                if isinstance(value, (float, np.floating)) and float(value).is_integer():
                    value = int(value)
                else:
                    raise SpaceError(digit.field, value, digit.values, index=digit.index, reason="not an integer")
            value = int(value)
            if value not in digit.values:
                raise SpaceError(digit.field, value, digit.values, index=digit.index)
            out.append(value)
        return out

    def decode(self, vector: Sequence[Any]) -> Architecture:
        """Turn a 41-integer vector into an :class:`Architecture` (validated first; see :meth:`validate`)."""
        v = self.validate(vector)
        by_stage: dict[int, dict[str, int]] = {}
        for digit, value in zip(self.digits, v):
            if digit.stage is not None:
                by_stage.setdefault(digit.stage, {})[digit.attr] = value
        stages = [
            StageConfig(
                block=self.stages[0].block,
                stride=self.stages[0].stride,
                filters=by_stage[0]["filters"],
                kernel=self.stem_kernel,
                layers=1,
                act=self.stem_act,
            )
        ]
        for s in range(1, NUM_STAGES):
            d = by_stage[s]
            rng = self.stages[s]
            stages.append(
                StageConfig(
                    block=rng.block,
                    stride=rng.stride,
                    filters=d.get("filters", by_stage[0]["filters"]),
                    kernel=d["kernel"],
                    layers=d["layers"],
                    expansion=d.get("expansion", 1),
                    se=bool(d.get("se", 0)),
                    act=ACTIVATIONS[d["act"]],
                )
            )
        return Architecture(
            resolution=v[0],
            stages=tuple(stages),
            head_channels=self.head_channels,
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            head_act=self.head_act,
            dropout=self.dropout,
            drop_path_rate=self.drop_path_rate,
        )

    def encode(self, arch: Architecture) -> list[int]:
        """Turn an :class:`Architecture` into its 41-integer vector.

        A stage with 0 layers has no configuration of its own in a layer list; if its fields are outside
        this space's ranges, they are set to the smallest allowed values (documented canonical form).

        Raises:
            NotInSpaceError: the network is valid but outside this space; the message names the stage and
                field (e.g. "stage 4 filters: got 256; expected one of [96, ..., 192]").
        """
        for s, (stage, rng) in enumerate(zip(arch.stages, self.stages)):
            if stage.block != rng.block:
                raise NotInSpaceError(f"stage {s} block", stage.block, (rng.block,))
            if stage.layers and stage.stride != rng.stride:
                raise NotInSpaceError(f"stage {s} stride", stage.stride, (rng.stride,))
        fixed = {
            "head channels": (arch.head_channels, self.head_channels),
            "number of classes": (arch.num_classes, self.num_classes),
            "input channels": (arch.in_chans, self.in_chans),
            "stage 0 kernel": (arch.stages[0].kernel, self.stem_kernel),
            "stage 0 activation": (arch.stages[0].act, self.stem_act),
            "head activation": (arch.head_act, self.head_act),
        }
        for name, (value, expected) in fixed.items():
            if value != expected:
                raise NotInSpaceError(name, value, (expected,), reason=f"fixed in space {self.name!r}; override it to encode")
        if arch.stages[1].filters != arch.stages[0].filters:
            raise NotInSpaceError(
                "stage 1 filters", arch.stages[1].filters, (arch.stages[0].filters,), reason="Table 2: stage 1 shares stage 0's filters"
            )
        vector = []
        for digit in self.digits:
            if digit.stage is None:
                value = arch.resolution
            else:
                stage = arch.stages[digit.stage]
                raw = getattr(stage, digit.attr)
                value = ACTIVATIONS.index(raw) if digit.attr == "act" else int(raw)
                if stage.layers == 0 and digit.attr != "layers" and value not in digit.values:
                    value = digit.values[0]
            if value not in digit.values:
                raise NotInSpaceError(digit.field, value, digit.values, index=digit.index)
            vector.append(value)
        return vector

    # --- index form, for searchers ---------------------------------------------------------------------
    def to_indices(self, vector: Sequence[Any]) -> list[int]:
        """Per-digit index of each value into its allowed values (validated first)."""
        return [d.values.index(v) for d, v in zip(self.digits, self.validate(vector))]

    def from_indices(self, indices: Sequence[int]) -> list[int]:
        """Inverse of :meth:`to_indices`; raises :class:`SpaceError` for an out-of-range index."""
        if len(indices) != VECTOR_LENGTH:
            raise SpaceError("index vector length", len(indices), (VECTOR_LENGTH,))
        out = []
        for d, i in zip(self.digits, indices):
            if not 0 <= int(i) < len(d.values):
                raise SpaceError(d.field + " index", int(i), f"0..{len(d.values) - 1}", index=d.index)
            out.append(d.values[int(i)])
        return out

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` uniformly random valid vectors, an ``n x 41`` int64 array (seeded numpy Generator).

        For low-discrepancy sampling of many networks use :meth:`sobol`.
        """
        rng = np.random.default_rng(seed)
        columns = [np.asarray(d.values, dtype=np.int64)[rng.integers(0, len(d.values), size=n)] for d in self.digits]
        return np.stack(columns, axis=1) if n else np.zeros((0, VECTOR_LENGTH), dtype=np.int64)

    def sobol(self, n: int, seed: int = 0, skip: int = 0) -> np.ndarray:
        """``n`` valid vectors from a scrambled Sobol sequence (GPUNet paper 3.2, Fig. 5).

        One Sobol dimension per digit: a point ``u`` in ``[0, 1)^41`` (:func:`gpunet.sobol.sobol_chunks`)
        maps digit ``d`` to ``d.values[floor(u_d * len(d.values))]``, so every digit's values are hit in
        equal proportions and pairs of digits are spread evenly (low discrepancy), unlike :meth:`sample`.

        Args:
            n: number of vectors (any ``n >= 0``; powers of two keep Sobol's balance properties exactly).
            seed: the scrambling seed; the same ``(space, n, seed, skip)`` gives the same array.
            skip: drop the first ``skip`` points (to continue a sequence).

        Returns:
            An ``n x 41`` int64 array of valid vectors (:meth:`validate` accepts every row).

        Raises:
            SpaceError: ``n < 0`` or ``skip < 0``.
        """
        chunks = sobol_chunks(VECTOR_LENGTH, n, seed=seed, skip=skip)
        out = np.empty((n, VECTOR_LENGTH), dtype=np.int64)
        tables = [(d.index, np.asarray(d.values, dtype=np.int64)) for d in self.digits]
        start = 0
        for points in chunks:
            rows = out[start : start + len(points)]
            for index, values in tables:
                idx = (points[:, index] * len(values)).astype(np.int64)
                np.minimum(idx, len(values) - 1, out=idx)
                rows[:, index] = values[idx]
            start += len(points)
        return out

    # --- description -------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: ranges per stage, fixed parts, and the size of the space."""
        stages = []
        for s, rng in enumerate(self.stages):
            row: dict[str, Any] = {"stage": s, "block": rng.block, "stride": rng.stride}
            if s == 0:
                row.update(filters=list(rng.filters), kernel=[self.stem_kernel], layers=[1], act=[self.stem_act])
            else:
                row.update(
                    filters=list(self.stages[0].filters if s == 1 else rng.filters),
                    kernel=list(rng.kernel),
                    layers=list(rng.layers),
                    act=list(rng.act),
                )
                if rng.block != "conv":
                    row.update(expansion=list(rng.expansion), se=list(rng.se))
            stages.append(row)
        return {
            "name": self.name,
            "source": self.source,
            "resolution": list(self.resolution),
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "head": {"channels": self.head_channels, "act": self.head_act, "dropout": self.dropout},
            "stages": stages,
            "vector_length": VECTOR_LENGTH,
            "num_vectors": self.num_vectors,
            "num_networks": self.num_networks,
            "log10_num_networks": round(math.log10(self.num_networks), 2),
        }


# ----------------------------------------------------------------------------------------------------------
# Presets and overrides
# ----------------------------------------------------------------------------------------------------------

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
        fields["block"] = _choice_range(raw["block"], f"{where}.block", BLOCK_TYPES)[0]
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
    expected_blocks = ("conv", "conv", "fused_irb", "fused_irb", "irb", "irb", "irb", "irb")
    for i, (stage, block) in enumerate(zip(stages, expected_blocks)):
        if stage.block != block:
            raise SpaceError(f"{where}.stages[{i}].block", stage.block, (block,), reason="Table 1 fixes each stage's block type")
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

    stem_kernel = positive_int(stem.get("kernel", 3), "stem.kernel")
    if stem_kernel % 2 == 0:
        raise SpaceError(f"{where}.stem.kernel", stem_kernel, "an odd kernel size")
    return SearchSpace(
        name=str(data.get("name", "custom")),
        source=str(data.get("source", "")),
        resolution=_int_range(data.get("resolution"), f"{where}.resolution", minimum=8),
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
