"""Layer keys: everything that determines one layer's latency, for the latency table (GPUNet paper, 3.2).

A :class:`LayerKey` is a :class:`~gpunet.arch.LayerSpec`'s latency-relevant attributes (type, input
``N x C x H x W``, output channels, kernel, stride, expansion, SE, activation, classes of a head) plus the
:class:`LatencyTarget` it is measured on (backend, device name, precision, batch size = ``N``).
The stage index is *not* part of the key: the same layer in two stages costs the same.

Every key has a stable human-readable form (:attr:`LayerKey.text`), e.g.::

    irb k5 e4 se1 swish s2 1x48x14x14->64 | onnxruntime fp32 @ Intel(R) Xeon(R) CPU (1 thread)

and a hash of that text (:attr:`LayerKey.digest`, 16 hex digits), the table's primary key. Keys travel as
plain dicts (:meth:`LayerKey.to_dict` / :meth:`LayerKey.from_dict`), e.g. over gRPC as JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

from ..arch import ACTIVATIONS, LAYER_TYPES, NUM_STAGES, LayerSpec, layer_text
from .errors import KeyFormatError

#: Backends the table knows (see :mod:`gpunet.latency.backends`).
BACKEND_NAMES: tuple[str, ...] = ("onnxruntime", "torch", "tensorrt")
#: Precisions a key may ask for.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
KEY_FORMAT = "gpunet-layer-key/v1"


def key_text(
    type: str, n: int, c: int, h: int, w: int, out_chs: int, kernel: int, stride: int, expansion: int,
    se: bool | int, act: str, num_classes: int, backend: str, device: str, precision: str,
) -> str:
    """The canonical text of a layer key: :func:`gpunet.arch.layer_text` plus the target.

    The digests of stored tables hash this text, so its format never changes (``tests`` pin a few digests).
    """
    layer = layer_text(type, n, c, h, w, out_chs, kernel, stride, expansion, se, act, num_classes)
    return f"{layer} | {backend} {precision} @ {device}"


def text_digest(text: str) -> str:
    """The 16-hex-digit hash of a key text (BLAKE2b, 8 bytes): the table's primary key."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class LatencyTarget:
    """Where and how layers are measured: the non-layer part of every :class:`LayerKey`.

    Attributes:
        backend: ``"onnxruntime"``, ``"torch"`` or ``"tensorrt"``.
        device: the device's name as the backend reports it, e.g. ``"NVIDIA H100 80GB HBM3"`` or
            ``"Intel(R) Xeon(R) CPU @ 2.20GHz (1 thread)"``. Profilers refuse keys of another device.
            Use :meth:`gpunet.latency.backends.LatencyBackend.target` to get the local one.
        precision: ``"fp32"`` or ``"fp16"`` (the paper: fp16 TensorRT).
        batch_size: the ``N`` of every layer's input (the paper: 1).
    """

    backend: str = "onnxruntime"
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise KeyFormatError("backend", self.backend, BACKEND_NAMES)
        if self.precision not in PRECISIONS:
            raise KeyFormatError("precision", self.precision, PRECISIONS)
        if not isinstance(self.device, str) or not self.device or "|" in self.device:
            raise KeyFormatError("device", self.device, "a non-empty device name without '|'")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise KeyFormatError("batch_size", self.batch_size, "a positive integer")

    @property
    def text(self) -> str:
        return f"{self.backend} {self.precision} b{self.batch_size} @ {self.device}"

    @property
    def digest(self) -> str:
        return text_digest(self.text)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "precision": self.precision, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatencyTarget":
        """Inverse of :meth:`to_dict`; raises :class:`KeyFormatError` for an unknown or bad field."""
        if not isinstance(data, Mapping):
            raise KeyFormatError("target", data, "a mapping with backend, device, precision, batch_size")
        unknown = set(data) - {"backend", "device", "precision", "batch_size"}
        if unknown:
            raise KeyFormatError(sorted(unknown)[0], data[sorted(unknown)[0]], ["backend", "device", "precision", "batch_size"])
        return cls(**dict(data))


@dataclass(frozen=True)
class LayerKey:
    """Everything that determines one layer's latency (paper 3.2: "the input data shape and the layer
    configurations as the key"), plus backend, device, precision and batch size.

    Attributes:
        type: ``"conv"``, ``"fused_irb"``, ``"irb"`` or ``"head"``.
        input_shape: ``N x C x H x W``; ``N`` is the batch size.
        out_chs, kernel, stride, expansion, se, act, num_classes: as in :class:`~gpunet.arch.LayerSpec`.
        backend, device, precision: as in :class:`LatencyTarget`.
    """

    type: str
    input_shape: tuple[int, int, int, int]
    out_chs: int
    kernel: int
    stride: int
    expansion: int
    se: bool
    act: str
    num_classes: int
    backend: str
    device: str
    precision: str

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: LayerSpec, target: LatencyTarget) -> "LayerKey":
        """The key of ``spec`` measured on ``target``; the spec's batch size is replaced by the target's."""
        _, c, h, w = spec.input_shape
        return cls(
            type=spec.type, input_shape=(target.batch_size, c, h, w), out_chs=spec.out_chs, kernel=spec.kernel,
            stride=spec.stride, expansion=spec.expansion, se=bool(spec.se), act=spec.act,
            num_classes=spec.num_classes if spec.type == "head" else 0,
            backend=target.backend, device=target.device, precision=target.precision,
        )

    def to_spec(self) -> LayerSpec:
        """The :class:`LayerSpec` to build and measure (stage 0, or 8 for a head; the stage does not change latency)."""
        return LayerSpec(
            type=self.type, input_shape=tuple(self.input_shape), out_chs=self.out_chs, kernel=self.kernel,  # type: ignore[arg-type]
            stride=self.stride, expansion=self.expansion, se=self.se, act=self.act, num_classes=self.num_classes,
            stage=NUM_STAGES if self.type == "head" else 0,
        )

    # --- identity ------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.input_shape[0]

    @property
    def target(self) -> LatencyTarget:
        return LatencyTarget(self.backend, self.device, self.precision, self.batch_size)

    @property
    def text(self) -> str:
        """Stable human-readable form, e.g. ``irb k5 e4 se1 swish s2 1x48x14x14->64 | torch fp16 @ NVIDIA H100``."""
        n, c, h, w = self.input_shape
        return key_text(self.type, n, c, h, w, self.out_chs, self.kernel, self.stride, self.expansion, self.se,
                        self.act, self.num_classes, self.backend, self.device, self.precision)

    @property
    def digest(self) -> str:
        """16 hex digits, the hash of :attr:`text`; the latency table's primary key."""
        return text_digest(self.text)

    def with_target(self, target: LatencyTarget) -> "LayerKey":
        n = target.batch_size
        return replace(self, input_shape=(n, *self.input_shape[1:]), backend=target.backend, device=target.device,
                       precision=target.precision)

    # --- wire form -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``format: gpunet-layer-key/v1``); ``batch_size`` repeats ``input_shape[0]``."""
        return {
            "format": KEY_FORMAT, "type": self.type, "input_shape": list(self.input_shape), "out_chs": self.out_chs,
            "kernel": self.kernel, "stride": self.stride, "expansion": self.expansion, "se": int(self.se),
            "act": self.act, "num_classes": self.num_classes, "backend": self.backend, "device": self.device,
            "precision": self.precision, "batch_size": self.batch_size, "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerKey":
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyFormatError: a missing, unknown or bad field, or a ``digest``/``batch_size`` that does not
                match the other fields (a key corrupted in transit).
        """
        if not isinstance(data, Mapping):
            raise KeyFormatError("key", data, "a mapping (LayerKey.to_dict)")
        if data.get("format", KEY_FORMAT) != KEY_FORMAT:
            raise KeyFormatError("format", data.get("format"), (KEY_FORMAT,))
        fields = ("type", "input_shape", "out_chs", "kernel", "stride", "expansion", "se", "act", "num_classes",
                  "backend", "device", "precision")
        unknown = set(data) - set(fields) - {"format", "batch_size", "digest"}
        if unknown:
            name = sorted(unknown)[0]
            raise KeyFormatError(name, data[name], list(fields))
        for name in fields:
            if name not in data:
                raise KeyFormatError(name, None, "a value (required)")
        if data["type"] not in LAYER_TYPES:
            raise KeyFormatError("type", data["type"], LAYER_TYPES)
        if data["act"] not in ACTIVATIONS:
            raise KeyFormatError("act", data["act"], ACTIVATIONS)
        shape = data["input_shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) != 4 or not all(_posint(v) for v in shape):
            raise KeyFormatError("input_shape", shape, "4 positive integers N x C x H x W")
        for name in ("out_chs", "kernel", "stride", "expansion"):
            if not _posint(data[name]):
                raise KeyFormatError(name, data[name], "a positive integer")
        if data["se"] not in (0, 1, True, False):
            raise KeyFormatError("se", data["se"], (0, 1))
        if isinstance(data["num_classes"], bool) or not isinstance(data["num_classes"], int) or data["num_classes"] < 0:
            raise KeyFormatError("num_classes", data["num_classes"], "an integer >= 0")
        target = LatencyTarget(data["backend"], data["device"], data["precision"], int(shape[0]))
        key = cls(
            type=data["type"], input_shape=tuple(int(v) for v in shape), out_chs=int(data["out_chs"]),  # type: ignore[arg-type]
            kernel=int(data["kernel"]), stride=int(data["stride"]), expansion=int(data["expansion"]),
            se=bool(data["se"]), act=data["act"], num_classes=int(data["num_classes"]),
            backend=target.backend, device=target.device, precision=target.precision,
        )
        if "batch_size" in data and data["batch_size"] != key.batch_size:
            raise KeyFormatError("batch_size", data["batch_size"], (key.batch_size,))
        if "digest" in data and data["digest"] != key.digest:
            raise KeyFormatError("digest", data["digest"], (key.digest,))
        return key

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LayerKey":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyFormatError("key", text[:80], f"JSON ({exc})") from None
        return cls.from_dict(data)


def _posint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
