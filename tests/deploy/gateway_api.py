"""Strict validation of the Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1) we ship.

No CRD of the Gateway API is stored here, so the schema below is transcribed from the
HTTPRoute v1 API reference, standard channel of Gateway API 1.2 (the first with rule
`timeouts` there; KServe's own routes set them too): the fields an HTTPRoute may have, with
unknown and experimental-channel fields (rule names, retry, session persistence, CORS) as
errors, as the API server's strict field validation would report them, and the CRD's
limits: list sizes, name and hostname patterns, path rules, weights 0..1,000,000, the
duration format, and the CEL rule that a Service backendRef needs a port. Filter bodies
other than the header modifiers are only checked to be objects. `route_errors` adds what
the chart promises on top of the API: weights read as percentages (they sum to 100) and
every backend is a predictor Service of ours.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema

from . import kube_schema

API_VERSION = "gateway.networking.k8s.io/v1"
KIND = "HTTPRoute"
# KServe's predictor Service in Standard mode: "<isvc>-predictor", port 80 -> the HTTP port.
PREDICTOR_SERVICE_PORT = 80

_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
_NAMESPACE = {
    "type": "string", "minLength": 1, "maxLength": 63,
    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
}  # fmt: skip
_GROUP = {
    "type": "string", "maxLength": 253,
    "pattern": r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}  # fmt: skip
_KIND = {
    "type": "string", "minLength": 1, "maxLength": 63,
    "pattern": r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$",
}  # fmt: skip
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_SECTION = {
    "type": "string", "minLength": 1, "maxLength": 253,
    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}  # fmt: skip
_HOSTNAME = {
    "type": "string", "minLength": 1, "maxLength": 253,
    "pattern": r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}  # fmt: skip
_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
_HEADER_NAME = {
    "type": "string", "minLength": 1, "maxLength": 256,
    "pattern": r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$",
}  # fmt: skip


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_PARENT_REF = _strict(
    {
        "group": _GROUP, "kind": _KIND, "namespace": _NAMESPACE, "name": _NAME,
        "sectionName": _SECTION, "port": _PORT,
    },
    ("name",),
)  # fmt: skip
_HEADER_MATCH = _strict(
    {
        "type": {"enum": ["Exact", "RegularExpression"]},
        "name": _HEADER_NAME,
        "value": {"type": "string", "minLength": 1, "maxLength": 4096},
    },
    ("name", "value"),
)
_MATCH = _strict(
    {
        "path": _strict(
            {
                "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                "value": {"type": "string", "maxLength": 1024},
            }
        ),
        "headers": {"type": "array", "maxItems": 16, "items": _HEADER_MATCH},
        "queryParams": {"type": "array", "maxItems": 16, "items": _HEADER_MATCH},
        "method": {
            "enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                     "PATCH"]
        },
    }
)  # fmt: skip
_HEADER_MODIFIER = _strict(
    {
        "set": {"type": "array", "maxItems": 16, "items": _strict(
            {"name": _HEADER_NAME, "value": {"type": "string", "maxLength": 4096}},
            ("name", "value"),
        )},
        "add": {"type": "array", "maxItems": 16, "items": _strict(
            {"name": _HEADER_NAME, "value": {"type": "string", "maxLength": 4096}},
            ("name", "value"),
        )},
        "remove": {"type": "array", "maxItems": 16, "items": _HEADER_NAME},
    }
)  # fmt: skip
_FILTER = _strict(
    {
        "type": {
            "enum": ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                     "RequestRedirect", "URLRewrite", "ExtensionRef"]
        },
        "requestHeaderModifier": _HEADER_MODIFIER,
        "responseHeaderModifier": _HEADER_MODIFIER,
        "requestMirror": {"type": "object"},
        "requestRedirect": {"type": "object"},
        "urlRewrite": {"type": "object"},
        "extensionRef": _strict({"group": _GROUP, "kind": _KIND, "name": _NAME},
                                ("group", "kind", "name")),
    },
    ("type",),
)  # fmt: skip
_BACKEND_REF = _strict(
    {
        "group": _GROUP, "kind": _KIND, "name": _NAME, "namespace": _NAMESPACE, "port": _PORT,
        "weight": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
        "filters": {"type": "array", "maxItems": 16, "items": _FILTER},
    },
    ("name",),
)  # fmt: skip
_RULE = _strict(
    {
        "matches": {"type": "array", "maxItems": 64, "items": _MATCH},
        "filters": {"type": "array", "maxItems": 16, "items": _FILTER},
        "backendRefs": {"type": "array", "maxItems": 16, "items": _BACKEND_REF},
        "timeouts": _strict({"request": _DURATION, "backendRequest": _DURATION}),
    }
)
HTTPROUTE_SCHEMA: dict[str, Any] = _strict(
    {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": KIND},
        "metadata": {"type": "object"},
        "spec": _strict(
            {
                "parentRefs": {"type": "array", "maxItems": 32, "items": _PARENT_REF},
                "hostnames": {"type": "array", "maxItems": 16, "items": _HOSTNAME},
                "rules": {"type": "array", "maxItems": 16, "items": _RULE},
            }
        ),
        "status": {"type": "object"},
    },
    ("apiVersion", "kind", "metadata", "spec"),
)

_VALIDATOR = jsonschema.Draft7Validator(HTTPROUTE_SCHEMA)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PATH_PREFIX = re.compile(r"^/(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})*$")
_DURATION_UNITS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


def _duration_ms(text: str) -> int:
    return sum(int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", text))


def api_errors(route: dict[str, Any]) -> list[str]:
    """What the API server would reject: the schema, ObjectMeta and the CRD's CEL rules."""
    errors = [
        f".{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in sorted(_VALIDATOR.iter_errors(route), key=lambda e: list(e.absolute_path))
    ]
    meta = route.get("metadata", {})
    errors += [f".metadata{e}" for e in kube_schema.object_meta_errors(meta)]
    # Custom resources are named like DNS subdomains (the API server checks it).
    if not (len(meta.get("name", "")) <= 253 and _DNS_SUBDOMAIN.match(meta.get("name", ""))):
        errors.append(f".metadata.name: {meta.get('name')!r} is not a DNS-1123 subdomain")
    if errors:
        return errors
    for i, rule in enumerate(route["spec"].get("rules", [])):
        for ref in rule.get("backendRefs", []):
            is_service = ref.get("group", "") == "" and ref.get("kind", "Service") == "Service"
            if is_service and "port" not in ref:
                errors.append(f".spec.rules.{i}: Must have port for Service reference")
        for match in rule.get("matches", []):
            path = match.get("path", {})
            if path.get("type", "PathPrefix") in ("PathPrefix", "Exact"):
                value = path.get("value", "/")
                if not _PATH_PREFIX.match(value) or "//" in value or "/./" in value:
                    errors.append(f".spec.rules.{i}: invalid path {value!r}")
        timeouts = rule.get("timeouts", {})
        if {"request", "backendRequest"} <= set(timeouts) and _duration_ms(
            timeouts["backendRequest"]
        ) > _duration_ms(timeouts["request"]):
            errors.append(f".spec.rules.{i}: backendRequest timeout > request timeout")
    return errors


def weights(route: dict[str, Any]) -> dict[str, int]:
    """{backend Service name: weight} of the route's single rule (weight defaults to 1)."""
    (rule,) = route["spec"]["rules"]
    return {ref["name"]: ref.get("weight", 1) for ref in rule["backendRefs"]}


def route_errors(route: dict[str, Any], isvc_names: set[str]) -> list[str]:
    """The API's rules plus ours: weights are percentages and the backends are the
    predictor Services KServe creates for the InferenceServices `isvc_names`."""
    errors = api_errors(route)
    if errors:
        return errors
    if len(route["spec"].get("rules", [])) != 1:
        return ["expected exactly one rule"]
    if not route["spec"].get("parentRefs"):
        errors.append("no parentRefs: the route is attached to no Gateway")
    (rule,) = route["spec"]["rules"]
    total = sum(weights(route).values())
    if total != 100:
        errors.append(f"backendRefs weights sum to {total}, not 100: {weights(route)}")
    expected = {f"{name}-predictor" for name in isvc_names}
    for ref in rule["backendRefs"]:
        if ref.get("kind", "Service") != "Service" or ref.get("group", "") != "":
            errors.append(f"backend {ref['name']} is not a core Service")
        if ref["name"] not in expected:
            errors.append(f"backend {ref['name']} is not one of the predictors {sorted(expected)}")
        if ref.get("port") != PREDICTOR_SERVICE_PORT:
            errors.append(f"backend {ref['name']}: port must be {PREDICTOR_SERVICE_PORT}")
        if "namespace" in ref:
            errors.append(f"backend {ref['name']}: cross-namespace refs need a ReferenceGrant")
    if len({ref["name"] for ref in rule["backendRefs"]}) != len(rule["backendRefs"]):
        errors.append("a backend appears twice")
    return errors
