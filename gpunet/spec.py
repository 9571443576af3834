"""The ``NASSearch`` resource: parsing and validation of its ``spec`` (one home for the operator, the controller,
the workers and ``gpunet run``), and the one table of its engine fields.

A ``NASSearch`` YAML is what ``kubectl apply`` takes and what ``gpunet run`` reads::

    apiVersion: nas.gpunet.dev/v1alpha1
    kind: NASSearch
    metadata: {name: fmnist-demo}
    spec:
      searchSpace: {preset: gpunet-tiny}
      latency: {backend: onnxruntime, device: cpu, precision: fp32, batchSize: 1, tiers: [0.5, 1.0],
                tolerance: 0.1, samples: 100000}
      algorithm: {name: lamcts-bo, seed: 0, budget: 6, initialSamples: 3, options: {},
                  objective: tiered}      # or mnas, with targetMs, w, hard (gpunet.objectives)
      training: {dataset: {kind: fashion-mnist, valSplit: 0.1}, epochs: 3, batchSize: 128, recipe: {...},
                 earlyStopping: {rule: median, minEpochs: 2, minPeers: 2}, maxRetries: 3,
                 final: {epochs: 0, topK: 1, init: scratch, recipe: {}}}   # epochs > 0: stage 2 of the winners
      scaling: {baseTier: 0, targetsMs: [0.8, 1.6], depthMultipliers: [...], widthMultipliers: [...],
                resolutionMultipliers: [...], candidatesPerTarget: 2}   # optional: phase Scaling (LACS)
      baselines: [{model: mobilenetv3_small_050, resolution: 0, inChans: 0}]   # optional: timm models, Table 3
      trainers: {...}; profilers: {...}; controller: {...}; storage: {...}   # Kubernetes only

**One table of fields.** Every engine field is a dataclass field below whose ``metadata`` holds its description
and its constraints in OpenAPI terms (``enum``, ``minimum``, ``exclusiveMaximum``, ``pattern``, ...). The parser
enforces exactly those constraints, and :func:`openapi_schema` turns the same table into the CRD's schema
(``crds/generate.py``), so the CRD and the parser cannot drift. Rules across fields are :data:`CROSS_FIELD_RULES`:
a CEL rule for the API server next to the same rule in Python.

**camelCase only**, in ``gpunet run`` as in ``kubectl apply``: a Kubernetes API names its fields in camelCase, and
a structural schema can list only one spelling of a field, so the API server refuses (strict field validation)
or prunes ``batch_size``. The parser refuses it too, naming the camelCase spelling, so the same file means the
same thing to both. The dataclasses use snake_case.

The training recipe defaults are the GPUNet paper's supplement Table 5 (timm: RMSprop-TF, lr 0.06, eps 1e-3,
weight decay 1e-5, step decay 0.97 every 2.4 epochs, warmup lr 1e-6, EMA 0.9999, RandAugment m9-mstd0.5, random
erasing 0.2 pixel mode, dropout 0.3, drop-connect 0.2, AMP, crop 1.0). Every error names the field path
(``spec.latency.tolerance``), the value and what was expected. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import yaml

from .errors import SpaceError
from .objectives import MNAS_SOFT_W, OBJECTIVES

API_VERSION = "nas.gpunet.dev/v1alpha1"
KIND = "NASSearch"
BACKENDS = ("onnxruntime", "torch", "tensorrt")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16")
DATASET_KINDS = ("fashion-mnist", "imagefolder")
#: Names of ``gpunet.search.pruners.PRUNERS`` (kept here so that the schema needs no import of the pruners).
STOPPING_RULES = ("median", "asha", "none")
#: Names of ``gpunet.search.ALGORITHMS`` (kept here so that the schema needs no import of the searchers).
ALGORITHMS = ("random", "sobol", "evolution", "bo", "turbo", "lamcts-bo", "lamcts-turbo")
#: Sections that only the Kubernetes operator reads; ``gpunet run`` ignores them.
KUBERNETES_SECTIONS = ("trainers", "profilers", "controller", "storage")
#: Default location of Fashion-MNIST (Debian package ``dataset-fashion-mnist``).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class SpecError(SpaceError):
    """An invalid ``NASSearch`` field: ``field`` is its path, e.g. ``spec.latency.tolerance``."""


def _f(default: Any, doc: str, **schema: Any) -> Any:
    """A dataclass field with its description and OpenAPI constraints (the one table, see the module docstring)."""
    meta = {"doc": doc, "schema": schema}
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class LatencySpec:
    """How latencies are measured and how networks are grouped into latency tiers (paper 3.2)."""

    backend: str = _f("onnxruntime", "Benchmark backend; the paper used TensorRT.", enum=BACKENDS)
    device: str = _f("cpu", "Where latency is measured.", enum=DEVICES)
    precision: str = _f("fp32", "Inference precision (fp16 needs device cuda).", enum=PRECISIONS)
    batch_size: int = _f(1, "Inference batch size.", minimum=1)
    tiers: tuple[float, ...] = _f((0.5, 1.0), "Latency tier targets in ms; each tier is searched separately. A network "
                                  "belongs to tier t when its estimated latency is within target x (1 +- tolerance).",
                                  minItems=1, maxItems=32, uniqueItems=True, items={"minimum": 0, "exclusiveMinimum": True})
    tolerance: float = _f(0.1, "Relative width of a tier around its target (0.1 = +-10%).", minimum=0,
                          exclusiveMinimum=True, maximum=1, exclusiveMaximum=True)
    samples: int = _f(100_000, "Sobol samples drawn to stratify the space into tiers.", minimum=1)


@dataclass(frozen=True)
class AlgorithmSpec:
    """The search algorithm run inside each tier (``gpunet.search.create(name, ...)``, paper 3.3)."""

    name: str = _f("lamcts-bo", "Search algorithm (gpunet.search.ALGORITHMS); lamcts-bo is the paper's.", enum=ALGORITHMS)
    seed: int = _f(0, "Seed of the Sobol sampling and of the searchers.", minimum=0)
    budget: int = _f(6, "Candidates trained per tier.", minimum=1)
    initial_samples: int = _f(3, "Random (Sobol) candidates before the model-based proposals start.", minimum=0)
    options: dict[str, Any] = _f({}, "Options of the chosen algorithm (checked against it before anything starts).")
    objective: str = _f("tiered", "What the search maximises: tiered = top-1 inside each latency tier of "
                        "latency.tiers (GPUNet); mnas = one search over the whole space maximising MnasNet's reward "
                        "top1 x (latency / targetMs)^w, whose hub is the Pareto front (gpunet.objectives).",
                        enum=OBJECTIVES)
    target_ms: float = _f(0.0, "The latency target T of the mnas reward in ms (required with objective mnas).", minimum=0)
    w: float = _f(MNAS_SOFT_W, "Exponent of the mnas reward above the target (MnasNet: -0.07 soft, -1 hard); also at or "
                  "under it unless hard. The Scaling phase selects its family with the same reward.", maximum=0)
    hard: bool = _f(False, "The mnas reward's exponent at or under the target is 0 (MnasNet's hard constraint with w -1).")


@dataclass(frozen=True)
class DatasetSpec:
    """The training data and its three splits (:mod:`gpunet.data`). ``path`` empty means the kind's default location.

    - **train**: the training images (Fashion-MNIST's 60,000; ImageFolder's ``train/``) less the validation split,
      optionally a class-balanced subset of ``trainSubset`` of them.
    - **validation**: ``valSplit`` images held out of the training images (class-balanced, seeded by ``seed``,
      disjoint from train); the search scores and selects candidates on it.
    - **test**: Fashion-MNIST's 10,000 test images, ImageFolder's ``val/`` (ImageNet's validation set, the split
      papers report); used once, to evaluate the final models (:func:`gpunet.train.evaluate_on_test`).
    """

    kind: str = _f("fashion-mnist", "Dataset format.", enum=DATASET_KINDS)
    path: str = _f("", "Dataset root inside the pods (e.g. on the shared volume); an imagefolder needs one.")
    val_split: float = _f(0.1, "The validation split held out of the training images (class-balanced, seeded): a "
                          "fraction of them if below 1, else a count of images. Candidates are scored and selected on "
                          "it; the test split is left for the final models.", minimum=0, exclusiveMinimum=True)
    seed: int = _f(0, "Seed of the validation hold-out and of the class-balanced subsets (the same for every "
                   "candidate and trainer).", minimum=0)
    train_subset: int = _f(0, "Train on a class-balanced subset of this many of the training images left after the "
                           "hold-out (0 = all).", minimum=0)
    val_subset: int = _f(0, "Validate on a class-balanced subset of this many images of the validation split (0 = all).",
                         minimum=0)
    test_subset: int = _f(0, "Evaluate the final models on a class-balanced subset of this many test images (0 = all).",
                          minimum=0)

    @property
    def root(self) -> str:
        return self.path or (FASHION_MNIST_DIR if self.kind == "fashion-mnist" else "")


_RATE = {"minimum": 0, "maximum": 1, "exclusiveMaximum": True}


@dataclass(frozen=True)
class RecipeSpec:
    """timm-style training hyper-parameters; defaults are the GPUNet paper's supplement Table 5."""

    optimizer: str = _f("rmsproptf", "timm optimizer name.", minLength=1)
    lr: float = _f(0.06, "Learning rate.", minimum=0, exclusiveMinimum=True)
    opt_eps: float = _f(1e-3, "Optimizer epsilon.", minimum=0, exclusiveMinimum=True)
    momentum: float = _f(0.9, "Optimizer momentum.", minimum=0, maximum=1)
    weight_decay: float = _f(1e-5, "Weight decay.", minimum=0)
    sched: str = _f("step", "timm scheduler name.", minLength=1)
    warmup_epochs: float = _f(0.0, "Warm-up epochs.", minimum=0)
    warmup_lr: float = _f(1e-6, "Learning rate at the start of the warm-up.", minimum=0)
    decay_epochs: float = _f(2.4, "Epochs between two learning-rate decays.", minimum=0, exclusiveMinimum=True)
    decay_rate: float = _f(0.97, "Learning-rate decay factor.", minimum=0, exclusiveMinimum=True, maximum=1)
    ema: float = _f(0.9999, "EMA decay of the weights (0 = off); with EMA an epoch's top-1 is the better of the raw "
                    "and EMA weights.", **_RATE)
    rand_augment: str = _f("rand-m9-mstd0.5", "timm RandAugment string (empty = off).", pattern="^(rand-.*)?$")
    reprob: float = _f(0.2, "Random erasing probability.", minimum=0, maximum=1)
    remode: str = _f("pixel", "Random erasing mode.", enum=("const", "rand", "pixel"))
    drop_rate: float = _f(0.3, "Dropout before the classifier.", **_RATE)
    drop_path_rate: float = _f(0.2, "Drop-connect (stochastic depth) rate.", **_RATE)
    label_smoothing: float = _f(0.0, "Label smoothing.", **_RATE)
    crop_pct: float = _f(1.0, "Centre-crop fraction at validation.", minimum=0, exclusiveMinimum=True, maximum=1)
    amp: bool = _f(True, "Automatic mixed precision (used on CUDA only).")
    workers: int = _f(0, "DataLoader worker processes per trainer.", minimum=0)


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Early stopping of unpromising candidates by a pruner (:mod:`gpunet.search.pruners`): ``median`` is Google
    Vizier's median stopping rule (Golovin et al. 2017), ``asha`` asynchronous successive halving (Li et al. 2020)."""

    enabled: bool = _f(True, "Stop unpromising candidates early (false is the same as rule none).")
    rule: str = _f("median", "The pruner: median = stop a candidate at epoch e if its best value up to e is below the "
                   "median of the running averages up to e of the tier's completed candidates (Vizier); asha = at the "
                   "rungs minResource x reductionFactor^k, keep only the top 1/reductionFactor of the values recorded "
                   "there; none = never stop. Values are top-1, or the mnas reward with objective mnas.",
                   enum=STOPPING_RULES)
    min_epochs: int = _f(2, "Warm-up: never stop a candidate before this epoch (the last epoch is never stopped).", minimum=1)
    min_peers: int = _f(2, "Decide only once this many other candidates of the tier count at the epoch (median: "
                        "completed ones that reached it; asha: those recorded at the rung).", minimum=1)
    min_resource: int = _f(1, "ASHA: epochs of the first rung.", minimum=1)
    reduction_factor: int = _f(3, "ASHA: the reduction factor eta (the top 1/eta of a rung go on).", minimum=2)


#: How a stage-2 training starts (``spec.training.final.init``).
FINAL_INITS = ("scratch", "checkpoint")


@dataclass(frozen=True)
class FinalTrainingSpec:
    """Stage 2: the longer training of each tier's best candidates once its search ends (GPUNet paper 4.1: the
    top network is trained again for longer; Vertex AI NAS: full training of the best trials). ``epochs`` 0 = off."""

    epochs: int = _f(0, "Epochs of the stage-2 training of each tier's winners (0 = no stage 2); with init "
                     "checkpoint, epochs on top of the search's.", minimum=0)
    top_k: int = _f(1, "Best candidates of each tier (by the search's validation score) trained again; the hub reports "
                    "the one with the best stage-2 validation top-1.", minimum=1, maximum=16)
    init: str = _f("scratch", "Start from fresh weights (scratch) or from the candidate's last search checkpoint.",
                   enum=FINAL_INITS)
    recipe: dict[str, Any] = _f({}, "Overrides of training.recipe for stage 2 and the baselines (camelCase recipe fields).")


@dataclass(frozen=True)
class TrainingSpec:
    """How every candidate is trained (the same recipe for all candidates of a tier)."""

    dataset: DatasetSpec = _f(DatasetSpec, "The training data.")
    epochs: int = _f(3, "Epochs per candidate.", minimum=1)
    batch_size: int = _f(128, "Training batch size.", minimum=1)
    recipe: RecipeSpec = _f(RecipeSpec, "Training recipe (GPUNet supplement, Table 5).")
    early_stopping: EarlyStoppingSpec = _f(EarlyStoppingSpec, "Early stopping of unpromising candidates.")
    max_retries: int = _f(3, "Retries of a candidate after failed attempts (a training error, an expired lease, a dead "
                         "worker; preemptions do not count): failed attempt maxRetries + 1 marks it failed.", minimum=0)
    final: FinalTrainingSpec = _f(FinalTrainingSpec, "Stage 2: the longer training of the tier winners (and of the "
                                  "baselines) after the search.")

    def to_dict(self) -> dict[str, Any]:
        """camelCase mapping, as in the YAML; :func:`parse_training` reads it back."""
        return _to_camel(dataclasses.asdict(self))

    def stage2(self, resumed_epochs: int = 0) -> "TrainingSpec":
        """The training of stage 2 and of the baselines: ``final.epochs`` epochs (plus ``resumed_epochs`` already
        done when resuming from a search checkpoint; the search's ``epochs`` when stage 2 is off), the recipe with
        ``final.recipe``'s overrides, no early stopping, no further stage."""
        recipe = _fill(RecipeSpec, {**_to_camel(dataclasses.asdict(self.recipe)), **self.final.recipe},
                       "spec.training.final.recipe")
        epochs = resumed_epochs + self.final.epochs if self.final.epochs else self.epochs
        return dataclasses.replace(self, epochs=epochs, recipe=recipe, final=FinalTrainingSpec(),
                                   early_stopping=dataclasses.replace(self.early_stopping, enabled=False))


_MULTIPLIERS = {"minItems": 1, "maxItems": 32, "uniqueItems": True, "items": {"minimum": 0, "exclusiveMinimum": True}}


@dataclass(frozen=True)
class ScalingSpec:
    """Latency-aware compound scaling (LACS, EfficientNet-X, Li et al. CVPR 2021): after the tier searches, one
    base network is scaled in depth, width and resolution into a family, one member per latency target
    (:mod:`gpunet.scaling`). Empty ``targetsMs`` = no Scaling phase."""

    targets_ms: tuple[float, ...] = _f((), "Latency targets of the family in ms (empty: no scaling).", maxItems=32,
                                       uniqueItems=True, items={"type": "number", "minimum": 0, "exclusiveMinimum": True})
    base_tier: int = _f(0, "The latency tier (index into latency.tiers; 0 with objective mnas) whose winner is scaled.",
                        minimum=0)
    depth_multipliers: tuple[float, ...] = _f((1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0), "Depth multipliers searched; a "
                                              "stage's layers become ceil(layers x d).", **_MULTIPLIERS)
    width_multipliers: tuple[float, ...] = _f((1.0, 1.1, 1.2, 1.4, 1.6, 2.0), "Width multipliers searched; filters are "
                                              "rounded to the space's channel step.", **_MULTIPLIERS)
    resolution_multipliers: tuple[float, ...] = _f((1.0, 1.15, 1.3, 1.5, 1.75, 2.0), "Resolution multipliers searched; "
                                                   "the resolution is rounded to the space's resolution step.", **_MULTIPLIERS)
    candidates_per_target: int = _f(2, "Scaled networks trained per target (those whose table latency is closest under "
                                    "it); the family member is the one with the best mnas reward.", minimum=1, maximum=16)

    @property
    def enabled(self) -> bool:
        return bool(self.targets_ms)


@dataclass(frozen=True)
class BaselineSpec:
    """A hand-designed or published network trained and measured next to the hub's models (GPUNet paper Table 3),
    built by ``timm.create_model(model, pretrained=False, num_classes=..., in_chans=...)``: no download."""

    model: str = _f("", "timm model name (timm.list_models()), e.g. mobilenetv3_small_050.", minLength=1,
                    pattern="^[A-Za-z0-9_.]+$")
    resolution: int = _f(0, "Input resolution in pixels (0 = the search space's largest).", minimum=0)
    in_chans: int = _f(0, "Input channels (0 = the search space's, e.g. 1 for Fashion-MNIST).", minimum=0)


#: Most entries of ``spec.baselines``.
MAX_BASELINES = 16

#: The engine sections of ``spec`` and their dataclasses.
ENGINE_SECTIONS: dict[str, type] = {"latency": LatencySpec, "algorithm": AlgorithmSpec, "training": TrainingSpec,
                                    "scaling": ScalingSpec}
#: Top-level keys of ``spec.searchSpace`` (overrides of :func:`gpunet.space.load_space`), camelCase.
SEARCH_SPACE_KEYS = ("preset", "resolution", "headChannels", "numClasses", "inChans", "dropPathRate", "stem", "head", "stages")
class CrossRule(NamedTuple):
    """A rule across the fields of one section: ``cel`` for the API server (a CRD ``x-kubernetes-validations``
    rule on the section; ``has()`` guards because the API server also checks the schema's ``default: {}``),
    ``check`` the same rule in Python; ``field`` is the field an error names."""

    cel: str
    field: str
    expected: str
    check: Callable[[Any], bool]


#: CEL rule of a list of numbers whose values must be distinct (in place of ``x-kubernetes-list-type: set``).
DISTINCT_RULE = {"rule": "self.all(x, self.exists_one(y, y == x))", "message": "expected distinct values"}

#: Rules across fields, by section dataclass.
CROSS_FIELD_RULES: dict[type, tuple[CrossRule, ...]] = {
    LatencySpec: (CrossRule("!has(self.precision) || self.precision != 'fp16' || has(self.device) && self.device == 'cuda'", "precision",
                            "fp32 on device cpu (fp16 needs cuda)", lambda s: s.precision != "fp16" or s.device == "cuda"),
                  CrossRule("!has(self.backend) || self.backend != 'tensorrt' || has(self.device) && self.device == 'cuda'", "device",
                            "cuda with backend tensorrt (TensorRT runs on NVIDIA GPUs only)",
                            lambda s: s.backend != "tensorrt" or s.device == "cuda"),
                  CrossRule("has(self.backend) && self.backend != 'onnxruntime' || !has(self.device) || self.device == 'cpu'", "device",
                            "cpu with backend onnxruntime (it measures on the CPU in fp32; use backend torch or tensorrt on cuda)",
                            lambda s: s.backend != "onnxruntime" or s.device == "cpu")),
    AlgorithmSpec: (CrossRule("!has(self.objective) || self.objective != 'mnas' || has(self.targetMs) && self.targetMs > 0.0",
                              "target_ms", "a latency target in ms > 0 with objective mnas",
                              lambda a: a.objective != "mnas" or a.target_ms > 0),),
    DatasetSpec: (CrossRule("!has(self.kind) || self.kind != 'imagefolder' || has(self.path) && self.path != ''", "path", "the ImageFolder root (train/ and val/)",
                            lambda d: d.kind != "imagefolder" or d.path != ""),
                  CrossRule("!has(self.valSplit) || self.valSplit < 1.0 || double(int(self.valSplit)) == self.valSplit",
                            "val_split", "a fraction below 1 or a whole count of images",
                            lambda d: d.val_split < 1 or float(d.val_split).is_integer()),),
}


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
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    #: ``spec.baselines`` (:func:`parse_baselines`).
    baselines: tuple[BaselineSpec, ...] = ()

    @property
    def tier_targets(self) -> tuple[float, ...]:
        """The target in ms of each searched tier: ``latency.tiers``, or the one target of objective ``mnas`` (a
        single search over the whole space)."""
        if self.algorithm.objective == "mnas":
            return (self.algorithm.target_ms,)
        return self.latency.tiers

    def space(self) -> Any:
        """The :class:`gpunet.space.SearchSpace` of ``spec.searchSpace``."""
        from .space import load_space

        return load_space(self.search_space)


# --- the table as an OpenAPI schema ----------------------------------------------------------------------


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


def _type_of(value: Any) -> str:
    for py, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (tuple, "array"), (dict, "object")):
        if isinstance(value, py):
            return name
    raise TypeError(f"no OpenAPI type for {value!r}")


def openapi_schema(cls: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of dataclass ``cls`` (camelCase properties, defaults, constraints, CEL
    rules), as the CRD carries it. Nested dataclasses default to ``{}`` so that the API server fills in their
    defaults too."""
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta, default = f.metadata, (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        if dataclasses.is_dataclass(default):
            node = {**openapi_schema(type(default)), "default": {}}
        elif isinstance(default, dict):
            node = {"type": "object", "default": {}, "x-kubernetes-preserve-unknown-fields": True}
        else:
            node = {"type": _type_of(default), "default": list(default) if isinstance(default, tuple) else default}
        schema = dict(meta.get("schema") or {})
        if isinstance(default, tuple):
            items = dict(schema.pop("items", {}))
            node["items"] = {"type": items.pop("type", None) or _type_of(default[0]), **items}
            if schema.pop("uniqueItems", False):
                if node["items"]["type"] == "number":
                    # Not list-type set: the API server then compares such lists in a way that holds a stored
                    # [1.0, 2.0] unequal to itself, so every frozen-section rule (self == oldSelf) refused even the
                    # status writes of a search whose spec has integral numbers in a list.
                    node["x-kubernetes-validations"] = [dict(DISTINCT_RULE)]
                else:
                    node["x-kubernetes-list-type"] = "set"
        if "enum" in schema:
            schema["enum"] = list(schema["enum"])
        props[_camel(f.name)] = {"description": meta["doc"], **node, **schema}
    out: dict[str, Any] = {"type": "object", "description": (cls.__doc__ or "").split("\n\n")[0].strip(), "properties": props}
    rules = [{"rule": r.cel, "message": f"{_camel(r.field)}: expected {r.expected}", "fieldPath": f".{_camel(r.field)}"}
             for r in CROSS_FIELD_RULES.get(cls, ())]
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


# --- parsing ---------------------------------------------------------------------------------------------


def _section(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(where, raw, "a mapping")
    return dict(raw)


def _field_name(key: Any, allowed: Any, path: str, value: Any) -> str:
    """The dataclass name of camelCase ``key``; snake_case and unknown keys are refused (see the module docstring)."""
    key = str(key)
    name = _snake(key)
    if name in allowed and _camel(name) == key:
        return name
    hint = f"fields are camelCase: did you mean {_camel(key)!r}?" if _camel(key) != key and _snake(_camel(key)) in allowed \
        else "unknown field"
    raise SpecError(path, value, tuple(_camel(n) for n in allowed), reason=hint)


def _range_text(kind: str, schema: Mapping[str, Any]) -> str | None:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    noun = "an integer" if kind == "integer" else "a number"
    if lo is not None and hi is not None:
        return f"{noun} in {'(' if schema.get('exclusiveMinimum') else '['}{lo}, {hi}{')' if schema.get('exclusiveMaximum') else ']'}"
    if lo is not None:
        return f"{noun} {'>' if schema.get('exclusiveMinimum') else '>='} {lo}"
    if hi is not None:
        return f"{noun} {'<' if schema.get('exclusiveMaximum') else '<='} {hi}"
    return None


def _check_value(value: Any, kind: str, schema: Mapping[str, Any], path: str) -> None:
    """``value`` (already of the right type) against the OpenAPI constraints of the table."""
    if "enum" in schema and value not in schema["enum"]:
        raise SpecError(path, value, tuple(schema["enum"]))
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if (lo is not None and (value < lo or (schema.get("exclusiveMinimum") and value == lo))) or \
            (hi is not None and (value > hi or (schema.get("exclusiveMaximum") and value == hi))):
        raise SpecError(path, value, _range_text(kind, schema))
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise SpecError(path, value, f"a string of at least {schema['minLength']} character(s)")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise SpecError(path, value, f"a string matching {schema['pattern']}")


_ITEM_DEFAULTS = {"number": 0.0, "integer": 0, "string": "", "boolean": False}


def _item_default(default: tuple[Any, ...], schema: Mapping[str, Any]) -> Any:
    """A value of a list field's item type: its default's first item, or the schema's ``items.type``."""
    return default[0] if default else _ITEM_DEFAULTS[(schema.get("items") or {})["type"]]


def _coerce(value: Any, default: Any, path: str, item: Any = None) -> Any:
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
        if not isinstance(value, (list, tuple)):
            raise SpecError(path, value, "a list")
        return tuple(_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    return value


def _fill(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from camelCase mapping ``raw``, checking every field against the table."""
    raw = _section(raw, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{where}.{key}"
        name = _field_name(key, fields, path, value)
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        schema = f.metadata.get("schema") or {}
        if dataclasses.is_dataclass(default):
            values[name] = _fill(type(default), value, path)
            continue
        if isinstance(default, dict):
            values[name] = _section(value, path)
            continue
        value = _coerce(value, default, path, _item_default(default, schema) if isinstance(default, tuple) else None)
        if isinstance(default, tuple):
            if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf):
                raise SpecError(path, list(value), f"a list of {schema.get('minItems', 0)} to {schema.get('maxItems')} items")
            if schema.get("uniqueItems") and len(set(value)) != len(value):
                raise SpecError(path, list(value), "distinct values")
            for i, item in enumerate(value):
                _check_value(item, _type_of(_item_default(default, schema)), schema.get("items") or {}, f"{path}[{i}]")
        else:
            _check_value(value, _type_of(default), schema, path)
        values[name] = value
    out = cls(**values)
    _check_cross(out, where)
    return out


def _check_cross(obj: Any, where: str) -> None:
    for rule in CROSS_FIELD_RULES.get(type(obj), ()):
        if not rule.check(obj):
            raise SpecError(f"{where}.{_camel(rule.field)}", getattr(obj, rule.field), rule.expected)


def parse_latency(raw: Any, where: str = "spec.latency") -> LatencySpec:
    return _fill(LatencySpec, raw, where)


def parse_algorithm(raw: Any, where: str = "spec.algorithm") -> AlgorithmSpec:
    """``spec.algorithm``, with ``options`` checked against the chosen algorithm (torch-free)."""
    from .search import SearchError, check_options

    spec = _fill(AlgorithmSpec, raw, where)
    for key, value in spec.options.items():
        try:
            check_options(spec.name, {key: value})
        except SearchError as exc:
            raise SpecError(f"{where}.options.{key}", value, exc.allowed if exc.reason is None else None,
                            reason=f"{exc.reason or 'unknown option'} of algorithm {spec.name}") from None
    return spec


def parse_scaling(raw: Any, where: str = "spec.scaling") -> ScalingSpec:
    return _fill(ScalingSpec, raw, where)


def parse_training(raw: Any, where: str = "spec.training") -> TrainingSpec:
    training = _fill(TrainingSpec, raw, where)
    training.stage2()  # the recipe overrides of stage 2 are recipe fields with valid values
    return training


def baselines_schema() -> dict[str, Any]:
    """The CRD schema of ``spec.baselines``: a list of :class:`BaselineSpec`."""
    item = openapi_schema(BaselineSpec)
    item["required"] = ["model"]
    del item["properties"]["model"]["default"]  # required, and "" would break its own minLength: the API server refuses the CRD
    return {"type": "array", "default": [], "maxItems": MAX_BASELINES, "items": item,
            "description": "timm models trained with stage 2's budget and measured like the hub's models (Table 3)."}


def parse_baselines(raw: Any, where: str = "spec.baselines") -> tuple[BaselineSpec, ...]:
    """``spec.baselines``: a list of ``{model, resolution, inChans}`` mappings (raises :class:`SpecError` naming
    the entry)."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)) or len(raw) > MAX_BASELINES:
        raise SpecError(where, raw, f"a list of at most {MAX_BASELINES} baselines ({{model, resolution, inChans}})")
    out = []
    for i, item in enumerate(raw):
        path = f"{where}[{i}]"
        if not isinstance(item, Mapping) or "model" not in item:
            raise SpecError(path, item, "a mapping with a timm model name under 'model'")
        out.append(_fill(BaselineSpec, item, path))
    if len({b for b in out}) != len(out):
        raise SpecError(where, [b.model for b in out], "distinct baselines")
    return tuple(out)


def _check_scaling(spec: SearchSpec) -> None:
    """``scaling.baseTier`` names a searched tier (a rule across sections)."""
    tiers = len(spec.tier_targets)
    if spec.scaling.enabled and spec.scaling.base_tier >= tiers:
        raise SpecError("spec.scaling.baseTier", spec.scaling.base_tier, f"a tier index 0..{tiers - 1}",
                        reason=f"the search has {tiers} tier(s) ({spec.algorithm.objective} objective)")


def parse_search(doc: Mapping[str, Any], check_space: bool = True) -> SearchSpec:
    """Validate a whole ``NASSearch`` document (``apiVersion``, ``kind``, ``metadata``, ``spec``).

    Raises :class:`SpecError` naming the first bad field. With ``check_space``, ``spec.searchSpace`` is also
    loaded through :func:`gpunet.space.load_space` (whose errors are :class:`~gpunet.errors.SpaceError`).
    """
    if not isinstance(doc, Mapping):
        raise SpecError("NASSearch", doc, "a mapping with apiVersion, kind, metadata and spec")
    if doc.get("apiVersion") != API_VERSION:
        raise SpecError("apiVersion", doc.get("apiVersion"), API_VERSION)
    if doc.get("kind") != KIND:
        raise SpecError("kind", doc.get("kind"), KIND)
    metadata = _section(doc.get("metadata"), "metadata")
    name = metadata.get("name")
    if not (isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name)):
        raise SpecError("metadata.name", name, "a DNS-1123 subdomain name (lowercase letters, digits, '-', '.')")
    spec = _section(doc.get("spec"), "spec")
    known = ("searchSpace", *ENGINE_SECTIONS, "baselines", *KUBERNETES_SECTIONS)
    for key in spec:
        _field_name(key, [_snake(k) for k in known], f"spec.{key}", spec[key])
    space = _section(spec.get("searchSpace", {"preset": "gpunet"}), "spec.searchSpace")
    for key in space:
        _field_name(key, [_snake(k) for k in SEARCH_SPACE_KEYS], f"spec.searchSpace.{key}", space[key])
    parsed = SearchSpec(
        name=name,
        search_space=space,
        latency=parse_latency(spec.get("latency")),
        algorithm=parse_algorithm(spec.get("algorithm")),
        training=parse_training(spec.get("training")),
        kubernetes={k: spec[k] for k in KUBERNETES_SECTIONS if k in spec},
        scaling=parse_scaling(spec.get("scaling")),
        baselines=parse_baselines(spec.get("baselines")),
    )
    _check_scaling(parsed)
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
