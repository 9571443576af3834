"""The search space and its 41-integer encoding (GPUNet paper, section 3.1, Table 1 and Table 2).

See :mod:`gpunet.space` for the encoding; this module holds :class:`SearchSpace` (digits, validation,
decode/encode, index form, random and Sobol samples, description) and the types of its parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from ..arch import ACTIVATIONS, BLOCK_TYPES, NUM_STAGES, Architecture, StageConfig
from ..errors import NotInSpaceError, SpaceError
from ..sobol import sobol_chunks

#: Length of a Table 2 vector; a space with searched block choices (``gpunet-x``) appends one digit per such
#: stage (:attr:`SearchSpace.vector_length`).
VECTOR_LENGTH = 41
#: Per-stage digit attributes of stages 2-7, in Table 2 order.
BLOCK_DIGITS: tuple[str, ...] = ("filters", "kernel", "expansion", "se", "act", "layers")
STAGE1_DIGITS: tuple[str, ...] = ("kernel", "act", "layers")
_DIGIT_NAMES = {"filters": "filters", "kernel": "kernel", "expansion": "expansion", "se": "SE", "act": "activation",
                "layers": "#layers", "block": "block"}


@dataclass(frozen=True)
class StageRange:
    """The allowed values of one stage (a row of Table 1). Each field but ``block`` and ``stride`` is a sorted tuple.

    ``block`` is the stage's Table 1 block type; ``blocks`` the block types it may take (default: ``block``
    alone), sorted in :data:`gpunet.arch.BLOCK_TYPES` order. With more than one, the block type is a searched
    digit (the hybrid stages and the space-to-depth stem of ``gpunet-x``) and ``block`` serves only for shapes,
    which the choices share.
    """

    block: str
    stride: int
    filters: tuple[int, ...]
    kernel: tuple[int, ...] = (3,)
    layers: tuple[int, ...] = (1,)
    expansion: tuple[int, ...] = (1,)
    se: tuple[int, ...] = (0,)
    act: tuple[str, ...] = ("relu",)
    blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.blocks:
            object.__setattr__(self, "blocks", (self.block,))


@dataclass(frozen=True)
class Digit:
    """One position of the architecture vector: its index, human name and allowed values."""

    index: int
    field: str  # e.g. "stage 4 expansion"
    stage: int | None  # None for the resolution
    attr: str  # "resolution", "filters", "kernel", "expansion", "se", "act", "layers", "block"
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
        """The digits: Table 2's 41 in its order, then one ``block`` digit per stage with several block types.

        A block digit holds the index of the block type in :data:`gpunet.arch.BLOCK_TYPES` (0 conv,
        1 fused_irb, 2 irb, 3 s2d_conv), as an activation digit holds an index into ``ACTIVATIONS``.
        """
        digits = [Digit(0, "resolution", None, "resolution", self.resolution)]
        digits.append(Digit(1, "stage 0 filters", 0, "filters", self.stages[0].filters))
        for stage, attrs in [(1, STAGE1_DIGITS)] + [(s, BLOCK_DIGITS) for s in range(2, NUM_STAGES)]:
            for attr in attrs:
                raw = getattr(self.stages[stage], attr)
                values = tuple(ACTIVATIONS.index(a) for a in raw) if attr == "act" else tuple(raw)
                digits.append(Digit(len(digits), f"stage {stage} {_DIGIT_NAMES[attr]}", stage, attr, values))
        assert len(digits) == VECTOR_LENGTH
        for stage, rng in enumerate(self.stages):
            if len(rng.blocks) > 1:
                values = tuple(BLOCK_TYPES.index(b) for b in rng.blocks)
                digits.append(Digit(len(digits), f"stage {stage} block", stage, "block", values))
        return tuple(digits)

    @property
    def vector_length(self) -> int:
        """Digits of a vector: 41 (Table 2), plus one per stage whose block type is searched."""
        return len(self.digits)

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
        total = len(self.resolution) * math.prod(len(d.values) for d in self.digits if d.stage == 0)
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
        n = self.vector_length
        if isinstance(vector, (str, bytes)) or not isinstance(vector, Sequence) and not isinstance(vector, np.ndarray):
            raise SpaceError("vector", vector, f"a sequence of {n} integers")
        if len(vector) != n:
            reason = ("Table 2 encodes a network in 41 integers" if n == VECTOR_LENGTH else
                      f"space {self.name!r} encodes a network in Table 2's 41 integers plus {n - VECTOR_LENGTH} block digits")
            raise SpaceError("vector length", len(vector), (n,), reason=reason)
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
        """Turn a vector into an :class:`Architecture` (validated first; see :meth:`validate`)."""
        v = self.validate(vector)
        by_stage: dict[int, dict[str, int]] = {}
        for digit, value in zip(self.digits, v):
            if digit.stage is not None:
                by_stage.setdefault(digit.stage, {})[digit.attr] = value
        stages = [
            StageConfig(
                block=BLOCK_TYPES[by_stage[0]["block"]] if "block" in by_stage[0] else self.stages[0].block,
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
                    block=BLOCK_TYPES[d["block"]] if "block" in d else rng.block,
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
        """Turn an :class:`Architecture` into its vector (41 integers, plus the space's block digits).

        A stage with 0 layers has no configuration of its own in a layer list; if its fields are outside
        this space's ranges, they are set to the smallest allowed values (documented canonical form).

        Raises:
            NotInSpaceError: the network is valid but outside this space; the message names the stage and
                field (e.g. "stage 4 filters: got 256; expected one of [96, ..., 192]").
        """
        for s, (stage, rng) in enumerate(zip(arch.stages, self.stages)):
            if stage.block not in rng.blocks:
                raise NotInSpaceError(f"stage {s} block", stage.block, rng.blocks)
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
                value = {"act": ACTIVATIONS, "block": BLOCK_TYPES}[digit.attr].index(raw) if digit.attr in ("act", "block") else int(raw)
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
        if len(indices) != self.vector_length:
            raise SpaceError("index vector length", len(indices), (self.vector_length,))
        out = []
        for d, i in zip(self.digits, indices):
            if not 0 <= int(i) < len(d.values):
                raise SpaceError(d.field + " index", int(i), f"0..{len(d.values) - 1}", index=d.index)
            out.append(d.values[int(i)])
        return out

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` uniformly random valid vectors, an ``n x vector_length`` int64 array (seeded numpy Generator).

        For low-discrepancy sampling of many networks use :meth:`sobol`.
        """
        rng = np.random.default_rng(seed)
        columns = [np.asarray(d.values, dtype=np.int64)[rng.integers(0, len(d.values), size=n)] for d in self.digits]
        return np.stack(columns, axis=1) if n else np.zeros((0, self.vector_length), dtype=np.int64)

    def sobol(self, n: int, seed: int = 0, skip: int = 0) -> np.ndarray:
        """``n`` valid vectors from a scrambled Sobol sequence (GPUNet paper 3.2, Fig. 5).

        One Sobol dimension per digit: a point ``u`` in ``[0, 1)^d`` (``d`` = :attr:`vector_length`, 41 for Table 2) (:func:`gpunet.sobol.sobol_chunks`)
        maps digit ``d`` to ``d.values[floor(u_d * len(d.values))]``, so every digit's values are hit in
        equal proportions and pairs of digits are spread evenly (low discrepancy), unlike :meth:`sample`.

        Args:
            n: number of vectors (any ``n >= 0``; powers of two keep Sobol's balance properties exactly).
            seed: the scrambling seed; the same ``(space, n, seed, skip)`` gives the same array.
            skip: drop the first ``skip`` points (to continue a sequence).

        Returns:
            An ``n x d`` int64 array of valid vectors (:meth:`validate` accepts every row).

        Raises:
            SpaceError: ``n < 0`` or ``skip < 0``.
        """
        chunks = sobol_chunks(self.vector_length, n, seed=seed, skip=skip)
        out = np.empty((n, self.vector_length), dtype=np.int64)
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
            if len(rng.blocks) > 1:
                row["blocks"] = list(rng.blocks)
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
            "vector_length": self.vector_length,
            "num_vectors": self.num_vectors,
            "num_networks": self.num_networks,
            "log10_num_networks": round(math.log10(self.num_networks), 2),
        }
