"""Validation of a ``NASSearch`` spec on the operator side, and which fields may change after the start.

The CRD schema rejects what a structural schema can express (types, enums, minimums). What it cannot —
the search space itself, cross-field rules, name lengths — is checked here, before any child exists, so that
an invalid search ends as phase ``Failed`` with a ``Ready=False`` condition whose message names the field.
The engine sections are checked by :func:`gpunet.spec.parse_search` (the same parser ``gpunet run`` and the
controller use), the Kubernetes sections by :func:`validate_kubernetes`.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from . import API_VERSION, KIND

#: Sections that define the search: changing them after the start would change what is being searched, so
#: they are refused (the search keeps running with the spec it started with).
SEARCH_DEFINING: tuple[str, ...] = ("searchSpace", "latency", "algorithm", "training", "storage")
#: Sections applied live: pool sizes, images, resources and scheduling of the pods.
LIVE: tuple[str, ...] = ("trainers", "profilers", "controller")

#: The longest NASSearch name: children are named ``<name>-controller`` etc., Service names are DNS-1035
#: labels (63 characters) and pod names add a ReplicaSet hash and a suffix.
MAX_NAME_LENGTH = 40
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")

#: Defaults of the Kubernetes sections, as in the CRD (``crds/nassearch.yaml``); applied here too because the
#: operator must not rely on the API server's defaulting (tests check the two agree).
KUBERNETES_DEFAULTS: dict[str, dict[str, Any]] = {
    "trainers": {"maxReplicas": 1, "spot": True},
    "profilers": {"replicas": 1},
    "controller": {},
    "storage": {},
}
#: Size of the claim the operator creates when ``spec.storage`` names neither a claim nor a size.
DEFAULT_STORAGE_SIZE = "20Gi"


class InvalidSpec(ValueError):
    """A NASSearch field the operator cannot accept. ``field`` is its path, e.g. ``spec.storage.size``."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``spec`` with the Kubernetes sections' defaults filled in."""
    out = copy.deepcopy(dict(spec))
    for section, defaults in KUBERNETES_DEFAULTS.items():
        value = out.get(section)
        merged = dict(defaults)
        if isinstance(value, Mapping):
            merged.update(value)
        out[section] = merged
    return out


def validate(name: str, namespace: str | None, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a whole NASSearch and return its spec with defaults.

    Raises:
        InvalidSpec: naming the first offending field.
    """
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _DNS1035.match(name):
        raise InvalidSpec(
            "metadata.name",
            f"{name!r} must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters (it prefixes the children)",
        )
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec", "must be a mapping")
    validate_engine(name, namespace, spec)
    full = with_defaults(spec)
    validate_kubernetes(full)
    return full


def validate_engine(name: str, namespace: str | None, spec: Mapping[str, Any]) -> None:
    """The engine sections through :func:`gpunet.spec.parse_search` (searchSpace, latency, algorithm, training)."""
    from gpunet.errors import SpaceError  # torch-free
    from gpunet.spec import parse_search

    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}
    try:
        parse_search(doc, check_space=True)
    except SpaceError as exc:
        field = exc.field if exc.field.startswith(("spec", "metadata", "apiVersion", "kind")) else f"spec.{exc.field}"
        message = str(exc)
        if message.startswith(exc.field):
            message = message[len(exc.field) :].lstrip(": ")
        raise InvalidSpec(field, message) from exc


def _check_mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(field, f"must be a mapping, got {value!r}")
    return value


def _check_int(value: Any, field: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSpec(field, f"must be an integer >= {minimum}, got {value!r}")


def validate_kubernetes(spec: Mapping[str, Any]) -> None:
    """The Kubernetes sections (trainers, profilers, controller, storage) of a spec with defaults."""
    trainers = _check_mapping(spec.get("trainers"), "spec.trainers")
    profilers = _check_mapping(spec.get("profilers"), "spec.profilers")
    _check_mapping(spec.get("controller"), "spec.controller")
    storage = _check_mapping(spec.get("storage"), "spec.storage")
    _check_int(trainers.get("maxReplicas"), "spec.trainers.maxReplicas", 0)
    _check_int(profilers.get("replicas"), "spec.profilers.replicas", 0)
    if not isinstance(trainers.get("spot"), bool):
        raise InvalidSpec("spec.trainers.spot", f"must be true or false, got {trainers.get('spot')!r}")
    for section in ("trainers", "profilers", "controller"):
        image = spec[section].get("image")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            raise InvalidSpec(f"spec.{section}.image", f"must be a non-empty image reference, got {image!r}")
        resources = _check_mapping(spec[section].get("resources"), f"spec.{section}.resources")
        for kind in ("requests", "limits"):
            for key, qty in _check_mapping(resources.get(kind), f"spec.{section}.resources.{kind}").items():
                if isinstance(qty, bool) or not (isinstance(qty, int) or (isinstance(qty, str) and _QUANTITY.match(qty))):
                    raise InvalidSpec(f"spec.{section}.resources.{kind}.{key}", f"{qty!r} is not a quantity")
    claim, size = storage.get("existingClaim"), storage.get("size")
    if claim is not None and size is not None:
        raise InvalidSpec("spec.storage", "set either existingClaim or size, not both")
    if claim is not None and (not isinstance(claim, str) or not claim):
        raise InvalidSpec("spec.storage.existingClaim", f"must be a claim name, got {claim!r}")
    if size is not None and (isinstance(size, bool) or not (isinstance(size, int) or (isinstance(size, str) and _QUANTITY.match(size)))):
        raise InvalidSpec("spec.storage.size", f"{size!r} is not a quantity such as 100Gi")


def _leaf_diff(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _leaf_diff(old.get(key), new.get(key), f"{path}.{key}")
        return out
    return [] if old == new else [path]


def frozen_changes(started: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Paths of search-defining fields that differ between the spec the search started with and now.

    Example: ``["spec.latency.tiers"]``. An empty list means every change may be applied live.
    """
    out: list[str] = []
    for section in SEARCH_DEFINING:
        out += _leaf_diff(started.get(section), current.get(section), f"spec.{section}")
    return out
