"""Latency-aware compound scaling (LACS; EfficientNet-X, Li et al., "Searching for Fast Model Families on Datacenter
Accelerators", CVPR 2021): scale one searched base network in depth, width and resolution into a *family*, one
member per latency target, judged by latency (here: the latency table), not FLOPs as in EfficientNet.

This module is the latency-only part (no training): for each target it searches the grid of compound coefficients
``(d, w, r)`` (``spec.scaling.depthMultipliers`` x ``widthMultipliers`` x ``resolutionMultipliers``), scales the
base network with each (:func:`scale_architecture`, rounded to the space's steps) and keeps the scaled networks
whose table latency meets the target, closest under it first (:func:`plan_family`). The Scaling phase of the
controller (:mod:`gpunet.controller.scaling`) trains the first ``candidatesPerTarget`` of each target and picks the
family member by the MnasNet reward (:func:`gpunet.objectives.mnas_reward`) on validation top-1; ``gpunet scale``
prints this plan. EfficientNet-X's finding is that depth should grow much faster than width and resolution; the
grid lets the table and the reward find that rather than assuming it.

Rounding, as EfficientNet's ``round_filters`` / ``round_repeats`` (timm ``_efficientnet_builder``): a stage's
layers become ``ceil(layers * d)`` (the stem stays one layer, a skipped stage stays skipped); filters (and the head
width) become the nearest multiple of the space's channel step (:func:`channel_step`), never below 90% of
``filters * w``; the resolution becomes the nearest multiple of the space's resolution step (:func:`resolution_step`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from functools import reduce
from typing import Any, Callable, Iterable, Sequence

from .arch import Architecture
from .errors import GpunetError

#: Channel step when a space's filter values share no divisor above 1.
DEFAULT_CHANNEL_STEP = 8
#: Resolution step when a space has a single resolution.
DEFAULT_RESOLUTION_STEP = 4


def channel_step(space: Any) -> int:
    """The space's channel step: the greatest common divisor of every stage's filter values (Table 1: 8)."""
    values = [f for stage in space.stages for f in stage.filters]
    step = reduce(math.gcd, values, 0)
    return step if step > 1 else DEFAULT_CHANNEL_STEP


def resolution_step(space: Any) -> int:
    """The space's resolution step: the greatest common divisor of the differences of its resolutions (Table 1:
    224..512 step 32); :data:`DEFAULT_RESOLUTION_STEP` for a space with one resolution."""
    values = sorted(space.resolution)
    step = reduce(math.gcd, [b - a for a, b in zip(values, values[1:])], 0)
    return step if step > 0 else DEFAULT_RESOLUTION_STEP


def _round_to(value: float, step: int) -> int:
    """Nearest multiple of ``step`` (at least ``step``), raised by a step when rounding lost more than 10%."""
    out = max(step, int(value + step / 2) // step * step)
    return out + step if out < 0.9 * value else out


@dataclass(frozen=True)
class ScaledNetwork:
    """One scaled network: its coefficients, architecture and table latency (ms)."""

    depth_mult: float
    width_mult: float
    resolution_mult: float
    architecture: Architecture
    latency_ms: float

    @property
    def resolution(self) -> int:
        return self.architecture.resolution

    def to_dict(self) -> dict[str, Any]:
        return {"depth_mult": self.depth_mult, "width_mult": self.width_mult, "resolution_mult": self.resolution_mult,
                "resolution": self.resolution, "layers": self.architecture.num_layers,
                "latency_ms_estimated": self.latency_ms, "architecture": self.architecture.to_dict()}


def scale_architecture(base: Architecture, depth_mult: float, width_mult: float, resolution_mult: float, *,
                       channels: int = DEFAULT_CHANNEL_STEP, resolution: int = DEFAULT_RESOLUTION_STEP) -> Architecture:
    """``base`` scaled by the compound coefficients, rounded to the steps (see the module docstring).

    Raises:
        GpunetError: a multiplier that is not a finite number > 0.
    """
    for name, m in (("depth_mult", depth_mult), ("width_mult", width_mult), ("resolution_mult", resolution_mult)):
        if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
            raise GpunetError(name, m, "a multiplier > 0")
    stages = []
    for index, stage in enumerate(base.stages):
        layers = stage.layers if index == 0 else math.ceil(stage.layers * depth_mult - 1e-9)
        stages.append(dataclasses.replace(stage, layers=layers, filters=_round_to(stage.filters * width_mult, channels)))
    return dataclasses.replace(base, stages=tuple(stages), resolution=_round_to(base.resolution * resolution_mult, resolution),
                               head_channels=_round_to(base.head_channels * width_mult, channels),
                               name=f"{base.name or 'base'}-d{depth_mult:g}-w{width_mult:g}-r{resolution_mult:g}")


def scaled_networks(base: Architecture, depth_mults: Iterable[float], width_mults: Iterable[float],
                    resolution_mults: Iterable[float], *, channels: int = DEFAULT_CHANNEL_STEP,
                    resolution: int = DEFAULT_RESOLUTION_STEP) -> list[tuple[float, float, float, Architecture]]:
    """Every distinct scaled network of the coefficient grid, as ``(d, w, r, architecture)``; of coefficients that
    round to the same network the first (smallest) is kept. ``channels`` and ``resolution`` are the steps of
    :func:`scale_architecture`."""
    out: dict[Architecture, tuple[float, float, float, Architecture]] = {}
    for d, w, r in itertools.product(sorted(depth_mults), sorted(width_mults), sorted(resolution_mults)):
        arch = scale_architecture(base, d, w, r, channels=channels, resolution=resolution)
        out.setdefault(arch, (d, w, r, arch))
    return list(out.values())


@dataclass(frozen=True)
class FamilyTarget:
    """The scaled networks that meet one latency target, best first (closest under the target)."""

    target_ms: float
    choices: tuple[ScaledNetwork, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"target_ms": self.target_ms, "met": bool(self.choices), "choices": [c.to_dict() for c in self.choices]}


def plan_family(networks: Sequence[tuple[float, float, float, Architecture]], latency: Callable[[Architecture], float],
                targets_ms: Sequence[float], per_target: int) -> list[FamilyTarget]:
    """For each target, the ``per_target`` scaled networks whose latency is at or under it, highest latency
    first (the most network the target affords; ties: the larger depth multiplier, after EfficientNet-X).

    Args:
        networks: from :func:`scaled_networks`.
        latency: a network's latency in ms (e.g. :func:`gpunet.latency.estimate_latency` on the search's table).
        targets_ms: the family's latency targets in ms.
        per_target: most networks kept per target.

    Returns:
        One :class:`FamilyTarget` per target, in the order of ``targets_ms``; a target that even the smallest
        scaled network exceeds has no choices.
    """
    scored = [ScaledNetwork(d, w, r, arch, float(latency(arch))) for d, w, r, arch in networks]
    family = []
    for target in targets_ms:
        meets = [n for n in scored if math.isfinite(n.latency_ms) and n.latency_ms <= target]
        meets.sort(key=lambda n: (-n.latency_ms, -n.depth_mult, n.width_mult, n.resolution_mult))
        family.append(FamilyTarget(float(target), tuple(meets[:per_target])))
    return family


def family_grid(base: Architecture, space: Any, scaling: Any) -> list[tuple[float, float, float, Architecture]]:
    """:func:`scaled_networks` of ``base`` over the grid of ``spec.scaling`` (a :class:`~gpunet.spec.ScalingSpec`),
    with the steps of ``space``."""
    return scaled_networks(base, scaling.depth_multipliers, scaling.width_multipliers, scaling.resolution_multipliers,
                           channels=channel_step(space), resolution=resolution_step(space))
