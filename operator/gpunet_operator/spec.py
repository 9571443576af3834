"""What the operator checks in a ``NASSearch`` beyond its CRD schema, before any child exists.

The API server refuses what the schema expresses: types, enums, ranges, camelCase field names (strict field
validation), cross-field CEL rules, and changes of the frozen sections (:data:`SEARCH_DEFINING`, CEL transition
rules). What it cannot express is checked here, so that such a search ends as phase ``Failed`` with a
``Ready=False`` condition whose message names the field, within seconds and with no children: the search space
itself (:func:`gpunet.space.load_space`), ``algorithm.options`` against the chosen algorithm, and the quantities
of the Kubernetes sections (:func:`kubernetes.utils.parse_quantity`). The engine sections go through
:func:`gpunet.spec.parse_search`, the parser of ``gpunet run`` and the controller.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from kubernetes.utils.quantity import parse_quantity

from gpunet.errors import GpunetError

from . import API_VERSION, KIND

#: Sections that define the search; the CRD's transition rules make them immutable once the search exists.
SEARCH_DEFINING: tuple[str, ...] = ("searchSpace", "latency", "algorithm", "training", "scaling", "baselines", "storage")
#: Sections applied live: pool sizes, images, resources and scheduling of the pods.
LIVE: tuple[str, ...] = ("trainers", "profilers", "controller")

#: The longest NASSearch name: children are named ``<name>-controller`` etc., Service names are DNS-1035
#: labels (63 characters) and pod names add a ReplicaSet hash and a suffix.
MAX_NAME_LENGTH = 40
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

#: Defaults of the Kubernetes sections, as in the CRD; applied here too because the operator must not rely on
#: the API server's defaulting (tests check the two agree).
KUBERNETES_DEFAULTS: dict[str, dict[str, Any]] = {
    "trainers": {"maxReplicas": 1, "spot": True},
    "profilers": {"replicas": 1},
    "controller": {},
    "storage": {},
}
#: Size of the claim the operator creates when ``spec.storage`` names neither a claim nor a size.
DEFAULT_STORAGE_SIZE = "20Gi"


class InvalidSpec(GpunetError, ValueError):
    """A NASSearch field the operator cannot accept; ``field`` is its path, e.g. ``spec.storage.size``."""


def with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``spec`` with the Kubernetes sections' defaults filled in."""
    out = copy.deepcopy(dict(spec))
    for section, defaults in KUBERNETES_DEFAULTS.items():
        value = out.get(section)
        out[section] = {**defaults, **(value if isinstance(value, Mapping) else {})}
    return out


def validate(name: str, namespace: str | None, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a whole NASSearch and return its spec with defaults.

    Raises:
        InvalidSpec: naming the first offending field.
    """
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _DNS1035.match(name):
        raise InvalidSpec("metadata.name", name, f"a DNS-1035 label of at most {MAX_NAME_LENGTH} characters "
                          "(it prefixes the names of the search's pods and Service)")
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec", spec, "a mapping")
    validate_engine(name, namespace, spec)
    full = with_defaults(spec)
    validate_kubernetes(full)
    return full


def validate_engine(name: str, namespace: str | None, spec: Mapping[str, Any]) -> None:
    """The engine sections through :func:`gpunet.spec.parse_search` (searchSpace, latency, algorithm with its
    options, training); torch-free."""
    from gpunet.spec import parse_search

    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}
    try:
        parse_search(doc, check_space=True)
    except GpunetError as exc:
        field = exc.field if exc.field.startswith(("spec", "metadata", "apiVersion", "kind")) else f"spec.{exc.field}"
        raise InvalidSpec(field, exc.value, exc.expected, reason=exc.reason) from exc


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(field, value, "a mapping")
    return value


def _quantity(value: Any, field: str, example: str) -> None:
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        parse_quantity(value)
    except (ValueError, TypeError, ArithmeticError):
        raise InvalidSpec(field, value, f"a Kubernetes quantity such as {example}") from None


def validate_kubernetes(spec: Mapping[str, Any]) -> None:
    """The Kubernetes sections (trainers, profilers, controller, storage) of a spec with defaults."""
    trainers = _mapping(spec.get("trainers"), "spec.trainers")
    profilers = _mapping(spec.get("profilers"), "spec.profilers")
    storage = _mapping(spec.get("storage"), "spec.storage")
    _mapping(spec.get("controller"), "spec.controller")
    for value, field in ((trainers.get("maxReplicas"), "spec.trainers.maxReplicas"), (profilers.get("replicas"), "spec.profilers.replicas")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidSpec(field, value, "an integer >= 0")
    if not isinstance(trainers.get("spot"), bool):
        raise InvalidSpec("spec.trainers.spot", trainers.get("spot"), "true or false")
    for section in LIVE:
        image = spec[section].get("image")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            raise InvalidSpec(f"spec.{section}.image", image, "a non-empty image reference")
        resources = _mapping(spec[section].get("resources"), f"spec.{section}.resources")
        for kind in ("requests", "limits"):
            for key, qty in _mapping(resources.get(kind), f"spec.{section}.resources.{kind}").items():
                _quantity(qty, f"spec.{section}.resources.{kind}.{key}", "500m, 8Gi or 1")
    claim, size = storage.get("existingClaim"), storage.get("size")
    if claim is not None and size is not None:
        raise InvalidSpec("spec.storage", dict(storage), "either existingClaim or size, not both")
    if claim is not None and (not isinstance(claim, str) or not claim):
        raise InvalidSpec("spec.storage.existingClaim", claim, "a claim name")
    if size is not None:
        _quantity(size, "spec.storage.size", "100Gi")
