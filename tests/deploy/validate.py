"""One strict check for every object we ship, rendered by the chart or generated into
manifests/."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import checks, kserve_rules, kserve_runtime, kube_schema, tools

# manifests/ InferenceServices name the cluster-scoped runtimes of manifests/runtime/.
CLUSTER_RUNTIMES_DIR = tools.MANIFESTS_DIR / "runtime"


def cluster_runtimes() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(CLUSTER_RUNTIMES_DIR.glob("*.yaml")):
        objects += tools.load_yaml_documents(path)
    return objects


def runtimes_for(objects: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The runtimes an InferenceService among `objects` can use: those rendered with it,
    then the cluster-scoped ones of manifests/runtime/."""
    return kserve_runtime.runtimes_by_name([*objects, *cluster_runtimes()])


def predictor_forms(
    isvc: dict[str, Any], runtimes: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The stable predictor and each Standard-mode canary, as the pods KServe creates."""
    return [kserve_runtime.custom_form(isvc, runtimes)] + [
        kserve_runtime.custom_form(c, runtimes) for c in kserve_runtime.canary_predictors(isvc)
    ]


def assert_valid(objects: list[dict[str, Any]], knative_flags: set[str]) -> None:
    """KServe objects against their CRD schemas and admission rules, with the predictor pods
    KServe derives (runtime merged in) against Kubernetes; everything else against the
    Kubernetes schemas (the PodMonitor against its own rules)."""
    runtimes = runtimes_for(objects)
    for obj in objects:
        kind = obj["kind"]
        if kind in kube_schema.CRD_KINDS:
            errors = kube_schema.crd_errors(obj, kind)
            assert not errors, f"KServe {kind} CRD schema:\n" + "\n".join(errors)
        if kind == "InferenceService":
            errors = kserve_rules.webhook_errors(obj)
            assert not errors, "KServe webhook would reject:\n" + "\n".join(errors)
            for form in predictor_forms(obj, runtimes):
                errors = kube_schema.core_errors(kube_schema.predictor_pod(form))
                assert not errors, "predictor pod spec:\n" + "\n".join(errors)
                checks.assert_admissible(form, knative_flags)
        elif kind in kserve_runtime.RUNTIME_KINDS:
            errors = kserve_rules.runtime_errors(obj)
            assert not errors, f"{kind}:\n" + "\n".join(errors)
        elif kind == "PodMonitor":
            errors = checks.pod_monitor_errors(obj)
            assert not errors, "PodMonitor:\n" + "\n".join(errors)
        elif kind not in kube_schema.CRD_KINDS:
            errors = kube_schema.core_errors(obj)
            assert not errors, f"{kind}:\n" + "\n".join(errors)
