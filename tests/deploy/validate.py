"""One strict check for every object we ship, rendered by the chart or hand-written."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import checks, gateway_api, kube_schema


def assert_valid(
    objects: Iterable[dict[str, Any]], isvc_names: set[str], knative_flags: set[str]
) -> None:
    """InferenceServices against the KServe CRD schema and admission rules, with their
    predictor pods against Kubernetes; HTTPRoutes against Gateway API (weights over
    `isvc_names`' predictors); everything else against the Kubernetes schemas."""
    for obj in objects:
        if obj["kind"] == "HTTPRoute":
            errors = gateway_api.route_errors(obj, isvc_names)
            assert not errors, "HTTPRoute:\n" + "\n".join(errors)
        elif obj["kind"] == "InferenceService":
            errors = kube_schema.isvc_errors(obj)
            assert not errors, "KServe CRD schema:\n" + "\n".join(errors)
            errors = kube_schema.core_errors(kube_schema.predictor_pod(obj))
            assert not errors, "predictor pod spec:\n" + "\n".join(errors)
            checks.assert_admissible(obj, knative_flags)
        else:
            errors = kube_schema.core_errors(obj)
            assert not errors, f"{obj['kind']}:\n" + "\n".join(errors)
