"""Strict schema validation of what we ship, the way the API server would do it.

* InferenceService, ServingRuntime, ClusterServingRuntime: the `openAPIV3Schema` of their
  version from KServe's CRDs, stored in `schemas/<kind>-<version>.json` (so a fresh clone
  needs nothing else). The API
  server prunes or (with strict field validation, kubectl's default) rejects unknown
  fields of a structural schema; jsonschema would silently accept them, so `strictify`
  injects `additionalProperties: false` wherever `properties` is declared and the schema
  does not preserve unknown fields. Also enforced: int32/int64 ranges, `nullable`, and the
  uniqueness rules of `x-kubernetes-list-type` map/set lists.
* Core objects (ServiceAccount, and the pod KServe will create from the predictor spec):
  the strict Kubernetes JSON schemas that ship with `kubernetes-validate`.

Regenerate the stored CRD schemas after a KServe upgrade with

    python -m tests.deploy.kube_schema path/to/serving.kserve.io_inferenceservices.yaml \
        path/to/serving.kserve.io_servingruntimes.yaml \
        path/to/serving.kserve.io_clusterservingruntimes.yaml
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_FILE = SCHEMA_DIR / "inferenceservice-v1beta1.json"
CRD_VERSION = "v1beta1"
# The KServe kinds we ship, with the version stored for each.
CRD_KINDS = {
    "InferenceService": "v1beta1",
    "ServingRuntime": "v1alpha1",
    "ClusterServingRuntime": "v1alpha1",
}
# Kubernetes versions core objects are checked against: the chart's minimum and the
# newest that kubernetes-validate knows.
K8S_VERSIONS = ("1.29", ".".join(kubernetes_validate.latest_version().split(".")[:2]))

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


# --------------------------------------------------------------------------------------
# InferenceService (KServe CRD)
# --------------------------------------------------------------------------------------


def schema_file(kind: str) -> Path:
    return SCHEMA_DIR / f"{kind.lower()}-{CRD_KINDS[kind]}.json"


def extract_from_crd(crd_path: Path, source: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 2 MB of YAML
    crd = yaml.load(crd_path.read_text(), Loader=loader)
    assert crd["kind"] == "CustomResourceDefinition", crd_path
    kind = crd["spec"]["names"]["kind"]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == CRD_KINDS[kind])
    return {
        "source": {
            "crd": crd["metadata"]["name"],
            "kind": kind,
            "version": CRD_KINDS[kind],
            "from": source,
            "crd_sha256": hashlib.sha256(crd_path.read_bytes()).hexdigest(),
            "controller_gen": crd["metadata"]
            .get("annotations", {})
            .get("controller-gen.kubebuilder.io/version"),
            "extracted": datetime.date.today().isoformat(),
        },
        "openAPIV3Schema": version["schema"]["openAPIV3Schema"],
    }


@functools.cache
def stored_crd_schema(kind: str = "InferenceService") -> dict[str, Any]:
    return json.loads(schema_file(kind).read_text())


def strictify(schema: dict[str, Any]) -> dict[str, Any]:
    """Structural OpenAPI schema -> JSON Schema in which unknown fields are errors."""
    out = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        if node.pop("nullable", False) and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if node.get("x-kubernetes-embedded-resource"):
            props = node.setdefault("properties", {})
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            props.setdefault("metadata", {"type": "object"})
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key, value in node.items():
            if key in ("properties", "patternProperties"):
                for sub in value.values():
                    visit(sub)
            elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
                visit(value)

    visit(out)
    return out


def _list_type(validator, list_type, instance, schema) -> Iterator[jsonschema.ValidationError]:
    """`x-kubernetes-list-type`: `set` items unique, `map` items unique by their keys."""
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate entry in set list: {item!r}")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        props = schema.get("items", {}).get("properties", {})
        seen_keys: set[tuple[Any, ...]] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k, props.get(k, {}).get("default")) for k in keys)
            if key in seen_keys:
                yield jsonschema.ValidationError(
                    f"duplicate entry with key {dict(zip(keys, key, strict=True))} in map list"
                )
            seen_keys.add(key)


_format_checker = jsonschema.FormatChecker()


def _int_format(fmt: str):
    low, high = _INT_RANGES[fmt]

    @_format_checker.checks(fmt)
    def check(value: object) -> bool:
        return not isinstance(value, int) or isinstance(value, bool) or low <= value <= high

    return check


for _fmt in _INT_RANGES:
    _int_format(_fmt)

_CRDValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type}
)


@functools.cache
def crd_validator(kind: str = "InferenceService") -> jsonschema.protocols.Validator:
    schema = strictify(stored_crd_schema(kind)["openAPIV3Schema"])
    _CRDValidator.check_schema(schema)
    return _CRDValidator(schema, format_checker=_format_checker)


def _path(error: jsonschema.ValidationError) -> str:
    return "." + ".".join(str(p) for p in error.absolute_path) if error.absolute_path else "."


def crd_errors(obj: dict[str, Any], kind: str) -> list[str]:
    """CRD schema errors plus ObjectMeta errors (the CRD leaves metadata to the server)."""
    errors = [
        f"{_path(e)}: {e.message}"
        for e in sorted(crd_validator(kind).iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]
    api_version = f"serving.kserve.io/{CRD_KINDS[kind]}"
    if obj.get("apiVersion") != api_version:
        errors.append(f".apiVersion: {obj.get('apiVersion')!r} is not {api_version}")
    if obj.get("kind") != kind:
        errors.append(f".kind: {obj.get('kind')!r} is not {kind}")
    errors += [f".metadata{e}" for e in object_meta_errors(obj.get("metadata", {}))]
    return errors


def isvc_errors(obj: dict[str, Any]) -> list[str]:
    return crd_errors(obj, "InferenceService")


# --------------------------------------------------------------------------------------
# Core Kubernetes objects (kubernetes-validate's strict schemas)
# --------------------------------------------------------------------------------------


def _schema_dir(version: str) -> Path:
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    candidates = sorted(base.glob(f"v{version}.*-local-strict"))
    assert candidates, f"kubernetes-validate has no strict schemas for {version}"
    return candidates[-1]


@functools.cache
def _definitions(version: str) -> Resource:
    return Resource.from_contents(
        json.loads((_schema_dir(version) / "_definitions.json").read_text())
    )


@functools.cache
def core_validator(kind: str, api_version: str, version: str) -> jsonschema.protocols.Validator:
    group_version = api_version.split("/")
    name = (
        f"{kind.lower()}-{group_version[0]}.json"
        if len(group_version) == 1
        else f"{kind.lower()}-{group_version[0].split('.')[0]}-{group_version[1]}.json"
    )
    schema = json.loads((_schema_dir(version) / name).read_text())
    registry = (
        Registry()
        .with_resources([(schema.get("$id", name), Resource.from_contents(schema))])
        .with_resource(
            _definitions(version).contents.get("$id", "_definitions.json"), _definitions(version)
        )
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def core_errors(obj: dict[str, Any], versions: tuple[str, ...] = K8S_VERSIONS) -> list[str]:
    errors = []
    for version in versions:
        validator = core_validator(obj["kind"], obj["apiVersion"], version)
        errors += [f"[k8s {version}] {_path(e)}: {e.message}" for e in validator.iter_errors(obj)]
    return errors


def object_meta_errors(meta: dict[str, Any]) -> list[str]:
    """ObjectMeta checked through a ConfigMap wrapper (names, label/annotation types)."""
    wrapper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
    return core_errors(wrapper, versions=K8S_VERSIONS[-1:])


# Fields of the predictor that are KServe's, not the pod's (ComponentExtensionSpec etc.).
def predictor_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    """The Pod KServe derives from spec.predictor (custom container form)."""
    predictor = isvc["spec"]["predictor"]
    pod_fields = set(
        _definitions(K8S_VERSIONS[-1]).contents["$defs"]["io.k8s.api.core.v1.PodSpec"]["properties"]
    )
    spec = {k: copy.deepcopy(v) for k, v in predictor.items() if k in pod_fields}
    # A named predictor (a Standard-mode canary) runs as <isvc>-<name>-predictor.
    name = "-".join(filter(None, (isvc["metadata"]["name"], predictor.get("name"), "predictor")))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": spec,
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for arg in argv:
        crd_path = Path(arg)
        data = extract_from_crd(crd_path, source=f"kserve charts/kserve-crd ({crd_path.name})")
        path = schema_file(data["source"]["kind"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
