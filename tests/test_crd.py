"""The NASSearch CRD (crds/nassearch.yaml): a valid, structural CustomResourceDefinition whose schema accepts
every example, rejects malformed specs, agrees with the engine's spec parser and prints the right columns."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gpunet import spec as engine_spec
from gpunet.rpc import pb
from gpunet_operator import spec as operator_spec
from gpunet_operator.status import mirror

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = ROOT / "crds" / "nassearch.yaml"
K8S_VERSION = kubernetes_validate.latest_version()


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def openapi_schema() -> dict[str, Any]:
    (version,) = load_crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def to_json_schema(node: Any) -> Any:
    """The Kubernetes structural schema as a JSON Schema (draft 4), validating as `kubectl apply` does with its
    default strict field validation: unknown fields are errors unless x-kubernetes-preserve-unknown-fields."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "default"}
    if node.get("x-kubernetes-list-type") == "set" or engine_spec.DISTINCT_RULE in node.get("x-kubernetes-validations", []):
        out["uniqueItems"] = True
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft4Validator:
    schema = to_json_schema(openapi_schema())
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(schema)


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "NASSearch":
                docs.append((path.name, doc))
    return docs


def test_crd_validates_as_a_custom_resource_definition() -> None:
    crd = load_crd()
    assert kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    assert crd["spec"]["group"] == "nas.gpunet.dev"
    assert crd["spec"]["names"]["plural"] == "nassearches"
    assert crd["spec"]["names"]["shortNames"] == ["nas"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key in ("properties", "additionalProperties", "items"):
        child = node.get(key)
        if key == "properties":
            for name, sub in (child or {}).items():
                out += _walk(sub, f"{path}.{name}")
        elif isinstance(child, dict):
            out += _walk(child, f"{path}[{key}]")
    return out


def test_schema_is_structural() -> None:
    """Every node has a type unless it is int-or-string or preserves unknown fields; no types inside anyOf
    except the int-or-string pattern (the API server refuses a non-structural schema)."""
    for path, node in _walk(openapi_schema()):
        if node.get("x-kubernetes-int-or-string"):
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert "anyOf" not in node and "oneOf" not in node, path


def test_status_keeps_unknown_fields_for_kopf_but_spec_is_typed() -> None:
    schema = openapi_schema()
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    assert not schema["properties"]["spec"].get("x-kubernetes-preserve-unknown-fields")


def test_schema_accepts_every_example(validator: jsonschema.Draft4Validator) -> None:
    docs = example_documents()
    assert any(name == "search.yaml" for name, _ in docs)
    for name, doc in docs:
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"examples/{name}: {errors}"


def test_every_example_passes_the_engine_and_operator_checks() -> None:
    for name, doc in example_documents():
        operator_spec.validate(doc["metadata"]["name"], "default", doc["spec"])


BASE = {
    "apiVersion": "nas.gpunet.dev/v1alpha1",
    "kind": "NASSearch",
    "metadata": {"name": "base"},
    "spec": {
        "searchSpace": {"preset": "gpunet-tiny", "stages": {"3": {"layers": {"min": 1, "max": 2}}}},
        "latency": {"backend": "onnxruntime", "device": "cpu", "precision": "fp32", "tiers": [0.5, 1.0]},
        "algorithm": {"name": "lamcts-bo", "budget": 4},
        "training": {"dataset": {"kind": "fashion-mnist"}, "epochs": 2, "recipe": {"lr": 0.06}},
        "trainers": {"maxReplicas": 2, "resources": {"limits": {"nvidia.com/gpu": 1}}},
        "storage": {"size": "10Gi"},
    },
}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()

MALFORMED = {
    "empty tiers": ("spec.latency.tiers", []),
    "zero-ms tier": ("spec.latency.tiers", [0, 1.0]),
    "tier as text": ("spec.latency.tiers", ["fast"]),
    "duplicate tiers": ("spec.latency.tiers", [0.5, 0.5]),
    "unknown backend": ("spec.latency.backend", "tflite"),
    "int8 precision": ("spec.latency.precision", "int8"),
    "tolerance of 100%": ("spec.latency.tolerance", 1.0),
    "unknown algorithm": ("spec.algorithm.name", "grid"),
    "zero budget": ("spec.algorithm.budget", 0),
    "unknown dataset": ("spec.training.dataset.kind", "imagenet"),
    "zero epochs": ("spec.training.epochs", 0),
    "EMA decay of 1": ("spec.training.recipe.ema", 1.0),
    "negative trainers": ("spec.trainers.maxReplicas", -1),
    "spot as text": ("spec.trainers.spot", "yes"),
    "bad toleration operator": ("spec.trainers.tolerations", [{"key": "a", "operator": "Maybe"}]),
    "bad GPU quantity": ("spec.trainers.resources", {"limits": {"nvidia.com/gpu": "one"}}),
    "bad storage size": ("spec.storage.size", "lots"),
    "stride 3": ("spec.searchSpace.stages", {"3": {"stride": 3}}),
    "stage 8": ("spec.searchSpace.stages", {"8": {"layers": 2}}),
    "gelu stem": ("spec.searchSpace.stem", {"act": "gelu"}),
    "misspelt field": ("spec.latency.tier", [0.5]),
    "snake_case field": ("spec.latency.batch_size", 2),
    "snake_case search-space key": ("spec.searchSpace.head_channels", 1280),
    "unknown section": ("spec.cluster", {"gpus": 8}),
}


def test_schema_accepts_the_base_of_the_malformed_specs(validator: jsonschema.Draft4Validator) -> None:
    validator.validate(BASE)
    engine_spec.parse_search(BASE)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_schema_rejects_malformed_spec(validator: jsonschema.Draft4Validator, case: str) -> None:
    path, value = MALFORMED[case]
    errors = list(validator.iter_errors(_with(path, value)))
    assert errors, f"{case}: accepted"


def _properties(path: str) -> dict[str, Any]:
    node = openapi_schema()
    for key in path.split("."):
        node = node["properties"][key]
    return node["properties"]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def test_crd_file_is_generated_from_the_engine_spec() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "crds" / "generate.py"), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name, cls in engine_spec.ENGINE_SECTIONS.items():
        assert openapi_schema()["properties"]["spec"]["properties"][name] == {**engine_spec.openapi_schema(cls), "default": {}}


def _table(cls: type, path: str) -> list[tuple[str, Any, dict[str, Any]]]:
    """Every leaf field of the engine's table: (camelCase path, default, constraints)."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        here = f"{path}.{_camel(f.name)}"
        if dataclasses.is_dataclass(default):
            out += _table(type(default), here)
        else:
            out.append((here, default, dict(f.metadata["schema"])))
    return out


TABLE = [leaf for name, cls in engine_spec.ENGINE_SECTIONS.items() for leaf in _table(cls, f"spec.{name}")]


def _violations(default: Any, schema: dict[str, Any]) -> list[Any]:
    """Values that break the field's type or one of its constraints."""
    if isinstance(default, dict):
        return ["not a mapping"]
    bad: list[Any] = [{"a": 1}] if isinstance(default, str) else ["text"]
    if "enum" in schema:
        bad.append("not-one-of-them")
    for bound, step in (("minimum", -1), ("maximum", 1)):
        if bound in schema:
            edge = schema[bound]
            exclusive = schema.get("exclusiveMinimum" if bound == "minimum" else "exclusiveMaximum")
            bad.append(edge if exclusive else edge + step * (1 if isinstance(default, int) else 0.5))
    if "pattern" in schema:
        bad.append("does-not-match")
    if schema.get("minLength"):
        bad.append("")
    if isinstance(default, tuple):
        item = default[0] if default else 1.0  # an empty default (scaling.targetsMs): the items are numbers
        bad += ([[]] if schema.get("minItems") else []) + [[item] * 2] + \
            ([[schema["items"]["minimum"]]] if "minimum" in schema.get("items", {}) else [])
    return bad


@pytest.mark.parametrize(("path", "default", "schema"), TABLE, ids=[leaf[0] for leaf in TABLE])
def test_every_field_means_the_same_to_the_api_server_and_to_gpunet_run(validator: jsonschema.Draft4Validator, path: str,
                                                                      default: Any, schema: dict[str, Any]) -> None:
    """For every field of the table: the CRD schema and the engine's parser accept its default and refuse each
    violation of its type and constraints, the parser naming the field."""
    crd_node = openapi_schema()["properties"]["spec"]
    for key in path.split(".")[1:]:
        crd_node = crd_node["properties"][key]
    assert crd_node["default"] == ({} if isinstance(default, dict) else list(default) if isinstance(default, tuple) else default)
    accepted = _with(path, list(default) if isinstance(default, tuple) else default)
    validator.validate(accepted)
    engine_spec.parse_search(accepted, check_space=False)
    for value in _violations(default, schema):
        doc = _with(path, value)
        assert list(validator.iter_errors(doc)), f"{path}={value!r}: accepted by the CRD schema"
        with pytest.raises(engine_spec.SpecError) as info:
            engine_spec.parse_search(doc, check_space=False)
        assert info.value.field.startswith(path), (value, str(info.value))


def test_schema_defaults_of_the_kubernetes_sections_agree_with_the_operator() -> None:
    """The operator applies these defaults itself too (it must not rely on the API server's defaulting)."""
    for section, defaults in operator_spec.KUBERNETES_DEFAULTS.items():
        props = _properties(f"spec.{section}")
        for key, value in defaults.items():
            assert props[key]["default"] == value, f"spec.{section}.{key}"


def test_search_space_keys_are_the_engines() -> None:
    assert tuple(_properties("spec.searchSpace")) == engine_spec.SEARCH_SPACE_KEYS


def test_frozen_sections_have_transition_rules_naming_them() -> None:
    rules = openapi_schema()["properties"]["spec"]["x-kubernetes-validations"]
    assert [r["fieldPath"] for r in rules] == [f".{s}" for s in operator_spec.SEARCH_DEFINING]
    for rule, section in zip(rules, operator_spec.SEARCH_DEFINING):
        assert "oldSelf" in rule["rule"] and rule["message"].startswith(f"spec.{section} is frozen")


PRINTER_COLUMNS = ["Phase", "Tiers", "Evaluated", "Running", "Preempted", "Best Top-1", "Best Latency (ms)", "Age"]


def _jsonpath(obj: Any, path: str) -> Any:
    """The simple JSONPath of a printer column (``.a.b.c``) on ``obj``; None where absent."""
    assert re.fullmatch(r"(\.[A-Za-z0-9_]+)+", path), path
    for key in path.strip(".").split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def sample_status() -> dict[str, Any]:
    """What the operator writes for a controller in the middle of a two-tier search."""
    reply = pb.SearchStatus(
        phase=pb.SEARCH_PHASE_SEARCHING,
        search_name="demo",
        latency_table=pb.LatencyTableProgress(layers_needed=120, layers_measured=120),
        candidates=pb.CandidateCounts(queued=3, running=2, completed=7, stopped=4, failed=1, total=17, budget=40),
        preemptions=2,
        tiers=[
            pb.TierStatus(index=0, target_ms=0.5, evaluated=6, best_candidate_id="t0-c0004", best_top1=0.8812,
                          best_latency_ms=0.48, best_vector=[224] + [1] * 40),
            pb.TierStatus(index=1, target_ms=1.0, evaluated=5, best_candidate_id="t1-c0002", best_top1=0.9034,
                          best_latency_ms=0.97, best_vector=[256] + [1] * 40),
        ],
        records=[pb.CandidateRecord(id="t1-c0009", tier_index=1, state="running", epochs=1, top1=0.5, worker_id="p-1")],
    )
    return mirror(reply, [0.5, 1.0], conditions=[], budget_bytes=64 * 1024, generation=1)


def test_printer_columns_read_the_status_the_operator_writes() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == PRINTER_COLUMNS
    obj = {"metadata": {"name": "demo", "creationTimestamp": "2026-11-21T05:00:00Z"}, "status": sample_status()}
    row = {name: _jsonpath(obj, c["jsonPath"]) for name, c in columns.items()}
    assert row == {
        "Phase": "Searching",
        "Tiers": 2,
        "Evaluated": 11,
        "Running": 2,
        "Preempted": 2,
        "Best Top-1": 90.34,
        "Best Latency (ms)": 0.97,
        "Age": "2026-11-21T05:00:00Z",
    }
    types = {"string": str, "integer": int, "number": (int, float), "date": str}
    for name, c in columns.items():
        assert isinstance(row[name], types[c["type"]]), name


def test_sample_status_validates_against_the_status_schema() -> None:
    schema = to_json_schema(openapi_schema()["properties"]["status"])
    jsonschema.Draft4Validator(schema).validate(json.loads(json.dumps(sample_status())))
