"""Network latency from the table (GPUNet paper, 3.2) and its calibration against end-to-end measurements.

The paper estimates a network's latency as the sum of its layers' latencies and notes that the sum is
higher than the end-to-end measurement, because TensorRT fuses across layers in a whole network (Fig. 4).
:func:`estimate_latency` is that sum; :class:`Calibration` is an optional correction fitted on a few
networks measured end to end, and :func:`compare` reports rank agreement (Spearman, Kendall) and the
mean relative error before and after calibration.

Features (``n x 6`` arrays, see :func:`network_features`): total ms; ms of conv, fused-IRB, IRB, head
layers (:data:`FEATURE_TYPES`; a space-to-depth stem counts as a conv); number of layers. Calibration kinds:

- ``"linear"``: ``a * total + b``;
- ``"per-type"``: ``sum_t w_t * ms_t + c * layers + b`` (a per-layer-type scale plus a per-layer overhead).

Both are fitted by least squares on relative errors (rows weighted by ``1 / measured``), so small and
large networks count alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..arch import Architecture
from .errors import LatencyError, MissingLayersError
from .keys import LatencyTarget, LayerKey
from .table import LatencyTable

CALIBRATION_KINDS = ("linear", "per-type")
#: Layer types of features 1-4. EfficientNet-X's space-to-depth stem (``s2d_conv``) is a convolution here, so
#: that the per-type calibration keeps its 5 coefficients (and stored calibrations their meaning).
FEATURE_TYPES: tuple[str, ...] = ("conv", "fused_irb", "irb", "head")


def feature_type_index(layer_type: str) -> int:
    """Index in :data:`FEATURE_TYPES` of a layer type (``"s2d_conv"`` -> that of ``"conv"``)."""
    return FEATURE_TYPES.index("conv" if layer_type == "s2d_conv" else layer_type)
_FEATURES = {"linear": [0], "per-type": [1, 2, 3, 4, 5]}


def layer_keys(arch: Architecture, target: LatencyTarget) -> list[LayerKey]:
    """The key of every layer of ``arch`` in forward order (stem, blocks, head), repeats included."""
    return [LayerKey.from_spec(spec, target) for spec in arch.layer_specs(target.batch_size)]


def layer_latencies(arch: Architecture, table: LatencyTable, target: LatencyTarget) -> list[tuple[LayerKey, float]]:
    """``(key, median ms)`` for every layer of ``arch``.

    Raises:
        MissingLayersError: some layers are not in the table (lists them all).
    """
    keys = layer_keys(arch, target)
    found = table.get_many(keys)
    missing = [k for k in dict.fromkeys(keys) if k.digest not in found]
    if missing:
        raise MissingLayersError(missing, f"network {arch.name or 'architecture'}")
    return [(k, found[k.digest].median_ms) for k in keys]


def estimate_latency(arch: Architecture, table: LatencyTable, target: LatencyTarget,
                     calibration: "Calibration | None" = None) -> float:
    """The table estimate of a network's latency in ms: the sum of its layers' medians (paper 3.2),
    or, with ``calibration``, the calibrated value.

    Raises:
        MissingLayersError: some layers are not in the table.
    """
    if calibration is not None:
        return float(calibration.apply(network_features(arch, table, target)[None, :])[0])
    return float(sum(ms for _, ms in layer_latencies(arch, table, target)))


def network_features(arch: Architecture, table: LatencyTable, target: LatencyTarget) -> np.ndarray:
    """The 6 calibration features of one network (a ``6`` array; see the module docstring)."""
    out = np.zeros(6)
    for key, ms in layer_latencies(arch, table, target):
        out[0] += ms
        out[1 + feature_type_index(key.type)] += ms
        out[5] += 1
    return out


@dataclass(frozen=True)
class Calibration:
    """A correction of the table sum fitted on end-to-end measurements.

    Attributes:
        kind: ``"linear"`` or ``"per-type"``.
        coef: weights of the kind's features (linear: ``[a]``; per-type: ``[w_conv, w_fused, w_irb, w_head, c]``).
        intercept: ``b``, in ms.
        n: networks it was fitted on.
        target: the target's dict, for bookkeeping.
    """

    kind: str
    coef: tuple[float, ...]
    intercept: float
    n: int = 0
    target: Mapping[str, Any] = field(default_factory=dict)

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Calibrated latency (ms) from an ``n x 6`` feature array; an ``n`` array (NaN features give NaN)."""
        f = np.asarray(features, dtype=np.float64)
        return f[:, _FEATURES[self.kind]] @ np.asarray(self.coef) + self.intercept

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "coef": list(self.coef), "intercept": self.intercept, "n": self.n, "target": dict(self.target)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        """Inverse of :meth:`to_dict` (a table's meta entry); raises :class:`LatencyError` naming a bad field."""
        if not isinstance(data, Mapping):
            raise LatencyError("calibration", data, "a mapping with kind, coef, intercept")
        kind = data.get("kind")
        if kind not in CALIBRATION_KINDS:
            raise LatencyError("calibration kind", kind, CALIBRATION_KINDS)
        coef, intercept = data.get("coef"), data.get("intercept")
        size = len(_FEATURES[kind])
        if not isinstance(coef, (list, tuple)) or len(coef) != size or not all(_is_number(c) for c in coef):
            raise LatencyError("calibration coef", coef, f"{size} numbers for kind {kind!r}")
        if not _is_number(intercept):
            raise LatencyError("calibration intercept", intercept, "a number (ms)")
        n, target = data.get("n", 0), data.get("target", {})
        return cls(kind, tuple(float(c) for c in coef), float(intercept), int(n) if _is_number(n) else 0,
                   dict(target) if isinstance(target, Mapping) else {})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fit_calibration(features: np.ndarray, measured_ms: Sequence[float], kind: str = "linear",
                    target: LatencyTarget | None = None) -> Calibration:
    """Fit a :class:`Calibration` by least squares on relative error.

    Args:
        features: an ``n x 6`` array (:func:`network_features` or :meth:`gpunet.sampling.LayerGrid.features`).
        measured_ms: ``n`` end-to-end latencies (ms).
        kind: ``"linear"`` (needs ``n >= 2``) or ``"per-type"`` (needs ``n >= 7``).

    Raises:
        LatencyError: an unknown kind, too few networks, or non-positive measurements.
    """
    if kind not in CALIBRATION_KINDS:
        raise LatencyError("calibration kind", kind, CALIBRATION_KINDS)
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(measured_ms, dtype=np.float64)
    cols = _FEATURES[kind]
    if len(y) < len(cols) + 2:
        raise LatencyError(f"calibration {kind} networks", len(y), f"at least {len(cols) + 2} measured networks")
    if not (y > 0).all():
        raise LatencyError("measured_ms", [float(v) for v in y[~(y > 0)][:3]], "positive latencies (ms)")
    design = np.column_stack([f[:, cols], np.ones(len(y))])
    w = 1.0 / y
    sol, *_ = np.linalg.lstsq(design * w[:, None], y * w, rcond=None)
    return Calibration(kind, tuple(float(c) for c in sol[:-1]), float(sol[-1]), len(y),
                       target.to_dict() if target is not None else {})


def mean_relative_error(estimate_ms: Sequence[float], measured_ms: Sequence[float]) -> float:
    """``mean(|estimate - measured| / measured)`` (a fraction; 0.1 = 10%)."""
    e, y = np.asarray(estimate_ms, dtype=np.float64), np.asarray(measured_ms, dtype=np.float64)
    return float(np.mean(np.abs(e - y) / y))


@dataclass(frozen=True)
class FidelityReport:
    """How well the table estimate predicts end-to-end latency (what ``gpunet latency validate`` prints).

    Attributes:
        n: networks compared.
        spearman, kendall: rank correlations of estimate vs measurement (``scipy.stats``).
        mre_raw: mean relative error of the raw table sum.
        mre_calibrated: of the calibrated estimate, fitted and evaluated on the same networks.
        mre_calibrated_cv: of the calibrated estimate, leave-one-out (each network predicted by a
            calibration fitted without it): the honest figure for new networks.
        ratio_raw: median of ``estimate / measured`` (the paper's overestimation, Fig. 4).
        calibration: the calibration fitted on all ``n``.
    """

    n: int
    spearman: float
    kendall: float
    mre_raw: float
    mre_calibrated: float
    mre_calibrated_cv: float
    ratio_raw: float
    calibration: Calibration

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "spearman": self.spearman, "kendall": self.kendall, "mre_raw": self.mre_raw,
                "mre_calibrated": self.mre_calibrated, "mre_calibrated_cv": self.mre_calibrated_cv,
                "ratio_raw": self.ratio_raw, "calibration": self.calibration.to_dict()}


def leave_one_out(features: np.ndarray, measured_ms: Sequence[float], kind: str = "linear") -> np.ndarray:
    """Calibrated estimates of ``n`` networks, each from a calibration fitted on the other ``n - 1``: an ``n``
    array (ms), the honest prediction for networks the calibration has not seen.

    Args:
        features: ``n x 6`` features (only the kind's columns are used; ``"linear"`` uses column 0).
        measured_ms: the ``n`` end-to-end latencies (ms).

    Raises:
        LatencyError: as :func:`fit_calibration`, for ``n - 1`` networks.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(measured_ms, dtype=np.float64)
    out = np.empty(len(y))
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        out[i] = fit_calibration(f[rest], y[rest], kind).apply(f[i : i + 1])[0]
    return out


def compare(features: np.ndarray, measured_ms: Sequence[float], kind: str = "linear",
            target: LatencyTarget | None = None) -> FidelityReport:
    """Rank correlation and errors of the table estimate (``features[:, 0]``) against measurements.

    Args:
        features: ``n x 6`` features of the networks.
        measured_ms: their ``n`` end-to-end latencies (ms).
        kind: calibration kind to fit.
    """
    from scipy.stats import kendalltau, spearmanr

    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(measured_ms, dtype=np.float64)
    raw = f[:, 0]
    cal = fit_calibration(f, y, kind, target)
    loo = leave_one_out(f, y, kind)
    return FidelityReport(
        n=len(y), spearman=float(spearmanr(raw, y).statistic), kendall=float(kendalltau(raw, y).statistic),
        mre_raw=mean_relative_error(raw, y), mre_calibrated=mean_relative_error(cal.apply(f), y),
        mre_calibrated_cv=mean_relative_error(loo, y), ratio_raw=float(np.median(raw / y)), calibration=cal,
    )


def calibration_meta_name(target: LatencyTarget) -> str:
    """Name under which a table stores the calibration of ``target`` (:meth:`LatencyTable.set_meta`)."""
    return f"calibration:{target.digest}"


def load_calibration(table: LatencyTable, target: LatencyTarget) -> Calibration | None:
    data = table.get_meta(calibration_meta_name(target))
    return Calibration.from_dict(data) if data else None


def save_calibration(table: LatencyTable, calibration: Calibration, target: LatencyTarget) -> None:
    table.set_meta(calibration_meta_name(target), calibration.to_dict())
