"""The ``NASSearch`` resource: parsing and validation of its ``spec`` (one home for the operator, the controller,
the workers and ``gpunet run``).

A ``NASSearch`` YAML is what ``kubectl apply`` takes and what ``gpunet run`` reads::

    apiVersion: nas.gpunet.dev/v1alpha1
    kind: NASSearch
    metadata: {name: fmnist-demo}
    spec:
      searchSpace: {preset: gpunet-tiny}
      latency: {backend: onnxruntime, device: cpu, precision: fp32, batchSize: 1, tiers: [0.5, 1.0],
                tolerance: 0.1, samples: 100000}
      algorithm: {name: lamcts-bo, seed: 0, budget: 6, initialSamples: 3, options: {}}
      training: {dataset: {kind: fashion-mnist}, epochs: 3, batchSize: 128, recipe: {...},
                 earlyStopping: {enabled: true, minEpochs: 2, rule: median}, maxRetries: 3}
      trainers: {...}; profilers: {...}; controller: {...}; storage: {...}   # Kubernetes only

Keys are camelCase as in Kubernetes; the dataclasses use snake_case. The training recipe defaults are the
GPUNet paper's supplement Table 5 (timm: RMSprop-TF, lr 0.06, eps 1e-3, weight decay 1e-5, step decay 0.97
every 2.4 epochs, warmup lr 1e-6, EMA 0.9999, RandAugment m9-mstd0.5, random erasing 0.2 pixel mode, dropout
0.3, drop-connect 0.2, AMP, crop 1.0). Every error names the field path (``spec.latency.tolerance``), the
value and what was expected. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import SpaceError

API_VERSION = "nas.gpunet.dev/v1alpha1"
KIND = "NASSearch"
BACKENDS = ("onnxruntime", "torch", "tensorrt")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16")
DATASET_KINDS = ("fashion-mnist", "imagefolder")
STOPPING_RULES = ("median",)
#: Sections that only the Kubernetes operator reads; ``gpunet run`` ignores them.
KUBERNETES_SECTIONS = ("trainers", "profilers", "controller", "storage")
#: Default location of Fashion-MNIST (Debian package ``dataset-fashion-mnist``).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class SpecError(SpaceError):
    """An invalid ``NASSearch`` field: ``field`` is its path, e.g. ``spec.latency.tolerance``."""


@dataclass(frozen=True)
class LatencySpec:
    """How latencies are measured and how networks are grouped into latency tiers (paper 3.2)."""

    backend: str = "onnxruntime"
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 1
    #: Tier targets in ms; a network belongs to tier t when its estimated latency is within
    #: ``target * (1 +- tolerance)``.
    tiers: tuple[float, ...] = (0.5, 1.0)
    tolerance: float = 0.1
    #: Number of Sobol samples drawn for stratification.
    samples: int = 100_000


@dataclass(frozen=True)
class AlgorithmSpec:
    """The search algorithm run inside each tier (``gpunet.search.create(name, ...)``)."""

    name: str = "lamcts-bo"
    seed: int = 0
    #: Candidates trained per tier.
    budget: int = 6
    #: Random (Sobol) candidates before the model-based proposals start.
    initial_samples: int = 3
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """The training data. ``path`` empty means the kind's default location."""

    kind: str = "fashion-mnist"
    path: str = ""
    #: 0 = the whole training split, else a class-balanced subset of this many images.
    train_subset: int = 0
    #: 0 = the whole validation (test) split, else a class-balanced subset of this many images.
    val_subset: int = 0

    @property
    def root(self) -> str:
        return self.path or (FASHION_MNIST_DIR if self.kind == "fashion-mnist" else "")


@dataclass(frozen=True)
class RecipeSpec:
    """timm-style training hyper-parameters; defaults are the GPUNet paper's supplement Table 5."""

    optimizer: str = "rmsproptf"
    lr: float = 0.06
    opt_eps: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-5
    sched: str = "step"
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    decay_epochs: float = 2.4
    decay_rate: float = 0.97
    #: EMA decay of the weights; 0 turns EMA off. When on, an epoch's top-1 is the better of the raw and EMA weights.
    ema: float = 0.9999
    #: timm RandAugment config string; empty turns it off.
    rand_augment: str = "rand-m9-mstd0.5"
    #: Random-erasing probability and mode.
    reprob: float = 0.2
    remode: str = "pixel"
    drop_rate: float = 0.3
    drop_path_rate: float = 0.2
    label_smoothing: float = 0.0
    crop_pct: float = 1.0
    #: Automatic mixed precision (used on CUDA only).
    amp: bool = True
    #: DataLoader worker processes.
    workers: int = 0


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Median stopping rule: after ``min_epochs``, stop a candidate whose top-1 at epoch e is below the median of
    the other candidates' top-1 at epoch e (Golovin et al. 2017, Google Vizier)."""

    enabled: bool = True
    min_epochs: int = 2
    rule: str = "median"


@dataclass(frozen=True)
class TrainingSpec:
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    epochs: int = 3
    batch_size: int = 128
    recipe: RecipeSpec = field(default_factory=RecipeSpec)
    early_stopping: EarlyStoppingSpec = field(default_factory=EarlyStoppingSpec)
    #: Failed attempts (not preemptions) after which a candidate is marked failed.
    max_retries: int = 3

    def to_dict(self) -> dict[str, Any]:
        """camelCase mapping, as in the YAML; :func:`parse_training` reads it back."""
        return _to_camel(dataclasses.asdict(self))


@dataclass(frozen=True)
class SearchSpec:
    """A parsed ``NASSearch``: ``metadata.name`` plus the engine sections of ``spec``.

    ``search_space`` is the raw ``spec.searchSpace`` mapping (give it to :func:`gpunet.space.load_space`);
    ``kubernetes`` keeps the Kubernetes-only sections untouched.
    """

    name: str
    search_space: dict[str, Any]
    latency: LatencySpec = field(default_factory=LatencySpec)
    algorithm: AlgorithmSpec = field(default_factory=AlgorithmSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    kubernetes: dict[str, Any] = field(default_factory=dict)

    def space(self) -> Any:
        """The :class:`gpunet.space.SearchSpace` of ``spec.searchSpace``."""
        from .space import load_space

        return load_space(self.search_space)


# --- parsing ---------------------------------------------------------------------------------------------


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p.title() for p in rest)


def _to_camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): _to_camel(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_camel(v) for v in value]
    return value


def _section(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(where, raw, "a mapping")
    return dict(raw)


def _fill(cls: type, raw: Any, where: str, nested: Mapping[str, Any] | None = None) -> Any:
    """Build dataclass ``cls`` from camelCase mapping ``raw``, checking names and types of the fields."""
    raw = _section(raw, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _snake(str(key))
        path = f"{where}.{key}"
        if name not in fields:
            raise SpecError(path, value, reason="unknown field", allowed=tuple(_camel(n) for n in fields))
        if nested and name in nested:
            values[name] = nested[name](value, path)
            continue
        default = fields[name].default
        values[name] = _coerce(value, default, path)
    return cls(**values)


def _coerce(value: Any, default: Any, path: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError(path, value, "true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, value, "an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(path, value, "a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise SpecError(path, value, "a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not value:
            raise SpecError(path, value, "a non-empty list")
        return tuple(value)
    return value


def _check(ok: bool, path: str, value: Any, expected: Any) -> None:
    if not ok:
        raise SpecError(path, value, expected)


def parse_latency(raw: Any, where: str = "spec.latency") -> LatencySpec:
    spec = _fill(LatencySpec, raw, where)
    _check(spec.backend in BACKENDS, f"{where}.backend", spec.backend, BACKENDS)
    _check(spec.device in DEVICES, f"{where}.device", spec.device, DEVICES)
    _check(spec.precision in PRECISIONS, f"{where}.precision", spec.precision, PRECISIONS)
    _check(spec.batch_size >= 1, f"{where}.batchSize", spec.batch_size, "an integer >= 1")
    for i, t in enumerate(spec.tiers):
        ok = not isinstance(t, bool) and isinstance(t, (int, float)) and math.isfinite(t) and t > 0
        _check(ok, f"{where}.tiers[{i}]", t, "a latency target in ms > 0")
    _check(len(set(spec.tiers)) == len(spec.tiers), f"{where}.tiers", list(spec.tiers), "distinct targets")
    _check(0 < spec.tolerance < 1, f"{where}.tolerance", spec.tolerance, "a relative tolerance in (0, 1)")
    _check(spec.samples >= 1, f"{where}.samples", spec.samples, "an integer >= 1")
    if spec.precision == "fp16":
        _check(spec.device == "cuda", f"{where}.precision", spec.precision, "fp32 on device cpu")
    return dataclasses.replace(spec, tiers=tuple(float(t) for t in spec.tiers))


def parse_algorithm(raw: Any, where: str = "spec.algorithm") -> AlgorithmSpec:
    spec = _fill(AlgorithmSpec, raw, where, nested={"options": lambda v, p: _section(v, p)})
    _check(bool(spec.name), f"{where}.name", spec.name, "an algorithm name, e.g. lamcts-bo")
    _check(spec.budget >= 1, f"{where}.budget", spec.budget, "an integer >= 1")
    _check(0 <= spec.initial_samples, f"{where}.initialSamples", spec.initial_samples, "an integer >= 0")
    return spec


def parse_training(raw: Any, where: str = "spec.training") -> TrainingSpec:
    def dataset(v: Any, p: str) -> DatasetSpec:
        d = _fill(DatasetSpec, v, p)
        _check(d.kind in DATASET_KINDS, f"{p}.kind", d.kind, DATASET_KINDS)
        _check(d.kind != "imagefolder" or bool(d.path), f"{p}.path", d.path, "the ImageFolder root (train/ and val/)")
        _check(d.train_subset >= 0, f"{p}.trainSubset", d.train_subset, "0 (all) or a positive count")
        _check(d.val_subset >= 0, f"{p}.valSubset", d.val_subset, "0 (all) or a positive count")
        return d

    def recipe(v: Any, p: str) -> RecipeSpec:
        r = _fill(RecipeSpec, v, p)
        _check(r.lr > 0, f"{p}.lr", r.lr, "a learning rate > 0")
        _check(r.decay_epochs > 0, f"{p}.decayEpochs", r.decay_epochs, "a number of epochs > 0")
        _check(0 < r.decay_rate <= 1, f"{p}.decayRate", r.decay_rate, "a factor in (0, 1]")
        _check(0 <= r.ema < 1, f"{p}.ema", r.ema, "an EMA decay in [0, 1) (0 = off)")
        _check(0 <= r.reprob <= 1, f"{p}.reprob", r.reprob, "a probability in [0, 1]")
        _check(0 <= r.drop_rate < 1, f"{p}.dropRate", r.drop_rate, "a rate in [0, 1)")
        _check(0 <= r.drop_path_rate < 1, f"{p}.dropPathRate", r.drop_path_rate, "a rate in [0, 1)")
        _check(r.warmup_epochs >= 0, f"{p}.warmupEpochs", r.warmup_epochs, "a number of epochs >= 0")
        _check(r.workers >= 0, f"{p}.workers", r.workers, "an integer >= 0")
        _check(r.rand_augment == "" or r.rand_augment.startswith("rand-"), f"{p}.randAugment", r.rand_augment,
               "a timm RandAugment string such as rand-m9-mstd0.5, or empty")
        return r

    def stopping(v: Any, p: str) -> EarlyStoppingSpec:
        s = _fill(EarlyStoppingSpec, v, p)
        _check(s.rule in STOPPING_RULES, f"{p}.rule", s.rule, STOPPING_RULES)
        _check(s.min_epochs >= 1, f"{p}.minEpochs", s.min_epochs, "an integer >= 1")
        return s

    spec = _fill(TrainingSpec, raw, where, nested={"dataset": dataset, "recipe": recipe, "early_stopping": stopping})
    _check(spec.epochs >= 1, f"{where}.epochs", spec.epochs, "an integer >= 1")
    _check(spec.batch_size >= 1, f"{where}.batchSize", spec.batch_size, "an integer >= 1")
    _check(spec.max_retries >= 0, f"{where}.maxRetries", spec.max_retries, "an integer >= 0")
    return spec


def parse_search(doc: Mapping[str, Any], check_space: bool = True) -> SearchSpec:
    """Validate a whole ``NASSearch`` document (``apiVersion``, ``kind``, ``metadata``, ``spec``).

    Raises :class:`SpecError` naming the first bad field. With ``check_space``, ``spec.searchSpace`` is also
    loaded through :func:`gpunet.space.load_space` (whose errors are :class:`~gpunet.errors.SpaceError`).
    """
    if not isinstance(doc, Mapping):
        raise SpecError("NASSearch", doc, "a mapping with apiVersion, kind, metadata and spec")
    _check(doc.get("apiVersion") == API_VERSION, "apiVersion", doc.get("apiVersion"), API_VERSION)
    _check(doc.get("kind") == KIND, "kind", doc.get("kind"), KIND)
    metadata = _section(doc.get("metadata"), "metadata")
    name = metadata.get("name")
    _check(isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name or "") is not None,
           "metadata.name", name, "a DNS-1123 subdomain name (lowercase letters, digits, '-', '.')")
    spec = _section(doc.get("spec"), "spec")
    known = {"searchSpace", "latency", "algorithm", "training", *KUBERNETES_SECTIONS}
    for key in spec:
        _check(key in known, f"spec.{key}", spec[key], f"one of the fields {sorted(known)}")
    space = _section(spec.get("searchSpace", {"preset": "gpunet"}), "spec.searchSpace")
    parsed = SearchSpec(
        name=name,
        search_space=space,
        latency=parse_latency(spec.get("latency")),
        algorithm=parse_algorithm(spec.get("algorithm")),
        training=parse_training(spec.get("training")),
        kubernetes={k: spec[k] for k in KUBERNETES_SECTIONS if k in spec},
    )
    if check_space:
        parsed.space()
    return parsed


def load_spec(source: str | Path | Mapping[str, Any], check_space: bool = True) -> SearchSpec:
    """Read a ``NASSearch`` from a YAML file path or a mapping and validate it (:func:`parse_search`)."""
    if isinstance(source, Mapping):
        return parse_search(source, check_space)
    path = Path(source)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(str(path), None, reason=f"cannot read the file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise SpecError(str(path), None, reason=f"not valid YAML ({exc})") from exc
    return parse_search(doc, check_space)
