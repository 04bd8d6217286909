"""What KServe 0.21 makes of a runtime-form InferenceService: the predictor pod it creates.

An InferenceService with `predictor.model` (modelFormat, runtime, storageUri, ...) gets its
container from a ServingRuntime / ClusterServingRuntime. KServe:

* picks the runtime named by `model.runtime`, else the first one whose
  `supportedModelFormats` has the format with `autoSelect: true`, namespaced runtimes first
  (ModelSpec.GetSupportingRuntimes, pkg/apis/serving/v1beta1/predictor_model.go);
* merges the predictor's `model` container fields over the runtime's container with a
  strategic merge patch and concatenates the args, runtime's first
  (MergeRuntimeContainers, pkg/controller/v1beta1/inferenceservice/utils/utils.go);
* replaces `{{.Name}}`-style placeholders with the InferenceService's metadata
  (ReplacePlaceholders, same file);
* merges the predictor's pod fields over the runtime's (MergePodSpec, same file).

A Standard-mode canary (`spec.canary[]`) is the stable predictor with the canary's fields
merged over it (mergo.WithOverride: non-empty fields replace, structs merge, lists are
replaced) and fixed replicas (buildCanaryPredictor, components/predictor.go).

`custom_form` returns the InferenceService in the custom-container form with that merged
container, so every check written for custom containers applies to runtime-form ones.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")
# Fields of `predictor.model` that select the runtime and model; the rest is a Container.
MODEL_ONLY_FIELDS = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion",
                     "storageUri", "storage"}  # fmt: skip
# Strategic-merge keys of the Container lists we use (k8s.io/api/core/v1 patchMergeKey).
CONTAINER_LIST_KEYS = {"env": "name", "ports": "containerPort", "volumeMounts": "mountPath"}
POD_LIST_KEYS = {"volumes": "name", "imagePullSecrets": "name", "containers": "name"}
RUNTIME_POD_FIELDS = ("nodeSelector", "affinity", "tolerations", "volumes", "imagePullSecrets")
CANARY_AUTOSCALING_FIELDS = ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling")


def strategic_merge(
    base: dict[str, Any], patch: dict[str, Any], list_keys: dict[str, str]
) -> dict[str, Any]:
    """Maps merge recursively; lists with a merge key merge item by item; others replace."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value, {})
        elif key in list_keys and isinstance(value, list) and isinstance(out.get(key), list):
            merge_key = list_keys[key]
            merged = {item[merge_key]: item for item in out[key]}
            for item in value:
                current = merged.get(item[merge_key])
                merged[item[merge_key]] = strategic_merge(current, item, {}) if current else item
            out[key] = list(merged.values())
        else:
            out[key] = copy.deepcopy(value)
    return out


def mergo_override(base: Any, patch: Any) -> Any:
    """mergo.Merge(&base, patch, mergo.WithOverride) for JSON-like values."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = mergo_override(out[key], value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(patch) if patch not in (None, "", [], {}) else copy.deepcopy(base)


def runtimes_by_name(objects: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Namespaced runtimes first, as KServe looks them up."""
    found = [o for o in objects if o.get("kind") in RUNTIME_KINDS]
    found.sort(key=lambda o: RUNTIME_KINDS.index(o["kind"]))
    out: dict[str, dict[str, Any]] = {}
    for runtime in found:
        out.setdefault(runtime["metadata"]["name"], runtime)
    return out


def select_runtime(model: dict[str, Any], runtimes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    name = model.get("runtime")
    if name:
        assert name in runtimes, f"no ServingRuntime or ClusterServingRuntime named {name!r}"
        runtime = runtimes[name]
        formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
        assert model["modelFormat"]["name"] in formats, f"{name} does not serve the format"
    else:
        candidates = [
            r for r in runtimes.values()
            if any(f["name"] == model["modelFormat"]["name"] and f.get("autoSelect")
                   for f in r["spec"]["supportedModelFormats"])
        ]  # fmt: skip
        assert candidates, f"no runtime auto-selects format {model['modelFormat']['name']!r}"
        runtime = candidates[0]
    protocol = model.get("protocolVersion", "v1")
    supported = runtime["spec"].get("protocolVersions", ["v1"])
    assert protocol in supported, f"{runtime['metadata']['name']} does not speak {protocol}"
    assert not runtime["spec"].get("disabled"), f"{runtime['metadata']['name']} is disabled"
    return runtime


def _replace_placeholders(container: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(container)
    for field in ("Name", "Namespace"):
        text = text.replace("{{.%s}}" % field, meta.get(field.lower(), ""))  # noqa: UP031
    assert "{{" not in text, f"placeholder KServe cannot fill: {text[text.index('{{') :][:40]}"
    return json.loads(text)


def custom_form(isvc: dict[str, Any], runtimes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The InferenceService with its predictor as the pod KServe builds (custom form)."""
    predictor = isvc["spec"]["predictor"]
    if "model" not in predictor:
        return canary_free(isvc)
    model = predictor["model"]
    runtime = select_runtime(model, runtimes)
    runtime_container = runtime["spec"]["containers"][0]
    overrides = {k: v for k, v in model.items() if k not in MODEL_ONLY_FIELDS}
    container = strategic_merge(runtime_container, overrides, CONTAINER_LIST_KEYS)
    container["args"] = runtime_container.get("args", []) + model.get("args", [])
    container = _replace_placeholders(container, isvc["metadata"])
    runtime_pod = {k: runtime["spec"][k] for k in RUNTIME_POD_FIELDS if k in runtime["spec"]}
    pod_fields = {k: v for k, v in predictor.items() if k != "model"}
    out = canary_free(isvc)
    out["spec"]["predictor"] = strategic_merge(runtime_pod, pod_fields, POD_LIST_KEYS)
    out["spec"]["predictor"]["containers"] = [container]
    return out


def canary_free(isvc: dict[str, Any]) -> dict[str, Any]:
    """A copy holding one predictor: what one Deployment runs."""
    out = copy.deepcopy(isvc)
    out["spec"].pop("canary", None)
    return out


def canary_predictors(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    """InferenceServices whose predictor is each Standard-mode canary as KServe runs it."""
    out = []
    stable = isvc["spec"]["predictor"]
    for canary in isvc["spec"].get("canary", []):
        predictor = mergo_override(stable, canary["predictor"])
        for field in CANARY_AUTOSCALING_FIELDS:
            predictor.pop(field, None)
        one = canary_free(isvc)
        one["spec"]["predictor"] = predictor
        out.append(one)
    return out
