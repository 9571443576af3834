"""Baseline networks: timm models trained and measured next to the hub's models (GPUNet paper Table 3 compares each
GPUNet with EfficientNet, FBNet, RegNet, ... measured with the same TensorRT setup).

A :class:`TimmNetwork` stands where an :class:`~gpunet.arch.Architecture` stands in training, profiling and the
result files: it has ``resolution``, ``in_chans``, ``num_classes``, ``dropout``, ``drop_path_rate`` and
``to_dict()``, and :func:`gpunet.model.build_model` builds it with ``timm.create_model(name, pretrained=False,
num_classes=..., in_chans=..., drop_rate=..., drop_path_rate=...)`` (no download). Its JSON form is
``{"timm": name, "resolution", "in_chans", "num_classes", "dropout", "drop_path_rate"}``;
:func:`network_from_dict` reads either form. Torch-free at import.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from .errors import GpunetError

#: The key that marks a timm network's JSON form.
TIMM_KEY = "timm"
_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


class BaselineError(GpunetError, ValueError):
    """A baseline that cannot be built: an unknown timm model name, or a malformed network JSON."""


@dataclass(frozen=True)
class TimmNetwork:
    """A timm model at a fixed input size (``1 x in_chans x resolution x resolution``)."""

    model: str
    resolution: int
    in_chans: int = 3
    num_classes: int = 1000
    dropout: float = 0.0
    drop_path_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {TIMM_KEY: data.pop("model"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TimmNetwork":
        """Raises :class:`BaselineError` for a name that is not a timm-style identifier or a missing field."""
        name = data.get(TIMM_KEY)
        if not isinstance(name, str) or not _NAME.match(name):
            raise BaselineError("network.timm", name, "a timm model name (letters, digits, '_', '.')")
        try:
            resolution, in_chans = int(data["resolution"]), int(data.get("in_chans", 3))
            num_classes = int(data.get("num_classes", 1000))
            dropout, drop_path = float(data.get("dropout", 0.0)), float(data.get("drop_path_rate", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise BaselineError("network", sorted(data), "resolution, in_chans, num_classes as integers",
                                reason=str(exc)) from None
        if not (resolution >= 8 and in_chans >= 1 and num_classes >= 1):
            raise BaselineError("network", {"resolution": resolution, "in_chans": in_chans, "num_classes": num_classes},
                                "resolution >= 8, in_chans >= 1, num_classes >= 1")
        return cls(name, resolution, in_chans, num_classes, dropout, drop_path)

    def build(self) -> Any:
        """The ``nn.Module`` (random init, no pretrained weights; raises :class:`BaselineError` for a name timm
        does not know)."""
        import timm

        if not timm.is_model(self.model):
            raise BaselineError("model", self.model, "a timm model name (timm.list_models())")
        return timm.create_model(self.model, pretrained=False, num_classes=self.num_classes, in_chans=self.in_chans,
                                 drop_rate=self.dropout, drop_path_rate=self.drop_path_rate)


def network_from_dict(data: Any) -> Any:
    """The network of a JSON mapping: a :class:`TimmNetwork` (``{"timm": ...}``) or an
    :class:`~gpunet.arch.Architecture` (raises its errors, or :class:`BaselineError`)."""
    from .arch import Architecture

    if isinstance(data, dict) and TIMM_KEY in data:
        return TimmNetwork.from_dict(data)
    return Architecture.from_dict(data)


def baseline_network(baseline: Any, space: Any) -> TimmNetwork:
    """The network of one ``spec.baselines`` entry (:class:`gpunet.spec.BaselineSpec`) in ``space``: its resolution
    (0: the space's largest), in_chans (0: the space's) and the space's number of classes."""
    return TimmNetwork(baseline.model, int(baseline.resolution or max(space.resolution)),
                       int(baseline.in_chans or space.in_chans), int(space.num_classes))


def check_baselines(baselines: Any) -> None:
    """Every ``spec.baselines`` model is known to the installed timm (raises :class:`BaselineError` naming the
    entry); needs timm (the controller calls it when it starts)."""
    import timm

    for i, b in enumerate(baselines):
        if not timm.is_model(b.model):
            raise BaselineError(f"spec.baselines[{i}].model", b.model, "a timm model name (timm.list_models())")
