"""Canary / A-B rollout of a new checkpoint version (chart values `canary.*`, `httpRoute.*`).

Knative mode: one InferenceService whose predictor carries KServe's `canaryTrafficPercent`
(a field of the v1beta1 CRD); the changed STORAGE_URI makes the new revision the candidate.
Standard mode: KServe cannot split traffic, so the chart adds the candidate as a second
InferenceService and a Gateway API HTTPRoute weighs the two predictor Services.

The promote and roll-back sequences of docs/deploy.md are replayed step by step on the
rendered objects: each step changes only what the rollout needs (in Knative mode a change
to anything but canaryTrafficPercent would start yet another revision).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from . import checks, gateway_api, kserve_rules, kube_schema, tools

pytestmark = pytest.mark.usefixtures("helm")

VALUES = yaml.safe_load((tools.CHART_DIR / "values.yaml").read_text())
V1 = "s3://models/yolov5/detector/v1/"
V2 = "s3://models/yolov5/detector/v2/"
STANDARD = {"deploymentMode": "Standard", "model.storageUri": V1, "httpRoute.enabled": True}
KNATIVE = {"deploymentMode": "Knative", "model.storageUri": V1}
DOCS = (tools.REPO_ROOT / "docs" / "deploy.md").read_text()


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return tools.render(set_values={"fullnameOverride": "yolov5", **values})


def _isvcs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in tools.by_kind(objects, "InferenceService")}


def _route(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return tools.one(objects, "HTTPRoute")


def _assert_valid(objects: list[dict[str, Any]], knative: bool) -> None:
    isvcs = _isvcs(objects)
    for isvc in isvcs.values():
        assert not kube_schema.isvc_errors(isvc), kube_schema.isvc_errors(isvc)
        assert not kube_schema.core_errors(kube_schema.predictor_pod(isvc))
        checks.assert_admissible(isvc)
        checks.assert_all(isvc, VALUES["model"]["name"])
        assert checks.is_knative(isvc) == knative
    for route in tools.by_kind(objects, "HTTPRoute"):
        errors = gateway_api.route_errors(route, set(isvcs))
        assert not errors, errors


def _without(isvc: dict[str, Any], *fields: str) -> dict[str, Any]:
    out = copy.deepcopy(isvc)
    for f in fields:
        out["spec"]["predictor"].pop(f, None)
    return out


def test_crd_has_canary_traffic_percent() -> None:
    predictor = kube_schema.stored_crd_schema()["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["predictor"]["properties"]
    assert predictor["canaryTrafficPercent"] == {"format": "int64", "type": "integer"}
    assert "canaryTrafficPercent" in kserve_rules.COMPONENT_EXTENSION_FIELDS


# --------------------------------------------------------------------------------------
# Knative: canaryTrafficPercent
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0, 10, 50, 100])
def test_knative_canary(percent: int) -> None:
    objects = _render(
        {
            **KNATIVE,
            "canary.enabled": True,
            "canary.storageUri": V2,
            "canary.trafficPercent": percent,
        }
    )
    assert sorted(o["kind"] for o in objects) == ["InferenceService", "ServiceAccount"]
    _assert_valid(objects, knative=True)
    (isvc,) = _isvcs(objects).values()
    # 0 (roll back) must be rendered, not dropped as a false value.
    assert checks.predictor(isvc)["canaryTrafficPercent"] == percent
    assert kserve_rules.storage_uri(isvc) == V2, "the new revision serves the candidate"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    errors, flags = kserve_rules.knative_errors(isvc)
    assert not errors and not flags, (errors, flags)


def test_knative_without_canary_has_no_canary_field() -> None:
    (isvc,) = _isvcs(_render(KNATIVE)).values()
    assert "canaryTrafficPercent" not in checks.predictor(isvc)
    assert kserve_rules.storage_uri(isvc) == V1
    # Tag routing is on whether or not a canary runs: starting one adds no revision.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    (plain,) = _isvcs(_render({**KNATIVE, "canary.tagRouting": False})).values()
    assert "serving.kserve.io/enable-tag-routing" not in plain["metadata"]["annotations"]


def test_knative_canary_changes_only_the_model_and_the_split() -> None:
    (stable,) = _isvcs(_render(KNATIVE)).values()
    (canary,) = _isvcs(
        _render({**KNATIVE, "canary.enabled": True, "canary.storageUri": V2})
    ).values()
    assert canary["metadata"] == stable["metadata"]
    expected = copy.deepcopy(stable)
    expected["spec"]["predictor"]["canaryTrafficPercent"] = 10
    env = checks.kserve_container(expected)["env"]
    next(e for e in env if e["name"] == "STORAGE_URI")["value"] = V2
    assert canary == expected


def test_knative_promote_and_roll_back_steps() -> None:
    """docs/deploy.md: each step changes only canaryTrafficPercent, except the one that
    moves the candidate to the stable checkpoint while it gets 0 %."""
    canary = {**KNATIVE, "canary.enabled": True, "canary.storageUri": V2}

    def isvc(values: dict[str, Any]) -> dict[str, Any]:
        (out,) = _isvcs(_render(values)).values()
        return out

    start = isvc(canary)
    # Promote: 100 %, then the stable value follows, then the canary ends.
    full = isvc({**canary, "canary.trafficPercent": 100})
    moved = isvc({**canary, "canary.trafficPercent": 100, "model.storageUri": V2})
    done = isvc({**KNATIVE, "model.storageUri": V2})
    assert _without(full, "canaryTrafficPercent") == _without(start, "canaryTrafficPercent")
    assert moved == full, "setting model.storageUri to the candidate changes nothing"
    assert done == _without(moved, "canaryTrafficPercent"), "no new revision on promote"
    assert checks.predictor(full)["canaryTrafficPercent"] == 100
    # Roll back: 0 %, then the candidate becomes the stable checkpoint at 0 %, then ends.
    zero = isvc({**canary, "canary.trafficPercent": 0})
    reverted = isvc({**canary, "canary.trafficPercent": 0, "canary.storageUri": ""})
    ended = isvc(KNATIVE)
    assert _without(zero, "canaryTrafficPercent") == _without(start, "canaryTrafficPercent")
    assert checks.predictor(reverted)["canaryTrafficPercent"] == 0
    assert kserve_rules.storage_uri(reverted) == V1
    assert ended == _without(reverted, "canaryTrafficPercent"), "no new revision on the end"


# --------------------------------------------------------------------------------------
# Standard: a second InferenceService behind a weighted HTTPRoute
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [0, 10, 50, 100])
def test_standard_canary(percent: int) -> None:
    objects = _render(
        {
            **STANDARD,
            "canary.enabled": True,
            "canary.storageUri": V2,
            "canary.trafficPercent": percent,
        }
    )
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["HTTPRoute", "InferenceService", "InferenceService", "ServiceAccount"]
    _assert_valid(objects, knative=False)
    isvcs = _isvcs(objects)
    assert set(isvcs) == {"yolov5", "yolov5-canary"}
    assert kserve_rules.storage_uri(isvcs["yolov5"]) == V1
    assert kserve_rules.storage_uri(isvcs["yolov5-canary"]) == V2
    for isvc in isvcs.values():
        assert "canaryTrafficPercent" not in checks.predictor(isvc), "no split in Standard mode"
    assert isvcs["yolov5-canary"]["metadata"]["labels"]["app.kubernetes.io/component"] == (
        "inference-canary"
    )
    route = _route(objects)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["name"] == "yolov5-split"
    assert gateway_api.weights(route) == {
        "yolov5-predictor": 100 - percent,
        "yolov5-canary-predictor": percent,
    }
    assert sum(gateway_api.weights(route).values()) == 100


def test_standard_candidate_is_the_stable_predictor_but_for_the_model() -> None:
    stable = _isvcs(_render(STANDARD))["yolov5"]
    isvcs = _isvcs(_render({**STANDARD, "canary.enabled": True, "canary.storageUri": V2}))
    assert isvcs["yolov5"] == stable, "starting a canary leaves the stable service alone"
    candidate = copy.deepcopy(isvcs["yolov5-canary"])
    candidate["metadata"]["name"] = "yolov5"
    candidate["metadata"]["labels"]["app.kubernetes.io/component"] = "inference"
    env = checks.kserve_container(candidate)["env"]
    next(e for e in env if e["name"] == "STORAGE_URI")["value"] = V1
    assert candidate == stable


def test_standard_route_without_canary() -> None:
    objects = _render({**STANDARD, "httpRoute.hostnames[0]": "yolov5.example.com"})
    _assert_valid(objects, knative=False)
    assert list(_isvcs(objects)) == ["yolov5"]
    route = _route(objects)
    assert gateway_api.weights(route) == {"yolov5-predictor": 100}
    assert route["spec"]["hostnames"] == ["yolov5.example.com"]
    assert route["spec"]["parentRefs"] == VALUES["httpRoute"]["parentRefs"]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["timeouts"] == {"request": f"{VALUES['requestTimeoutSeconds']}s"}


def test_route_values_flow_through() -> None:
    objects = _render(
        {
            **STANDARD,
            "httpRoute.parentRefs[0].name": "public",
            "httpRoute.parentRefs[0].namespace": "gateways",
            "httpRoute.parentRefs[0].sectionName": "https",
            "httpRoute.pathPrefix": "/v2/models/yolov5",
            "httpRoute.annotations.example\\.com/team": "vision",
            "requestTimeoutSeconds": 120,
        }
    )
    route = _route(objects)
    assert route["spec"]["parentRefs"] == [
        {"name": "public", "namespace": "gateways", "sectionName": "https"}
    ]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"][0]["path"]["value"] == "/v2/models/yolov5"
    assert rule["timeouts"]["request"] == "120s"
    assert route["metadata"]["annotations"] == {"example.com/team": "vision"}
    assert not gateway_api.route_errors(route, {"yolov5"})


def test_standard_promote_and_roll_back_steps() -> None:
    canary = {**STANDARD, "canary.enabled": True, "canary.storageUri": V2}
    # Promote: all traffic to the candidate, the stable service rolls to it (at 0 %), end.
    full = _render({**canary, "canary.trafficPercent": 100})
    moved = _render({**canary, "canary.trafficPercent": 100, "model.storageUri": V2})
    done = _render({**STANDARD, "model.storageUri": V2})
    assert gateway_api.weights(_route(full))["yolov5-predictor"] == 0
    assert gateway_api.weights(_route(moved))["yolov5-predictor"] == 0
    assert kserve_rules.storage_uri(_isvcs(moved)["yolov5"]) == V2
    assert gateway_api.weights(_route(done)) == {"yolov5-predictor": 100}
    assert _isvcs(done) == {"yolov5": _isvcs(moved)["yolov5"]}
    # Roll back: no traffic to the candidate, then it goes; the stable one never changed.
    zero = _render({**canary, "canary.trafficPercent": 0})
    ended = _render(STANDARD)
    assert gateway_api.weights(_route(zero))["yolov5-canary-predictor"] == 0
    assert _isvcs(zero)["yolov5"] == _isvcs(ended)["yolov5"]


def test_route_validator_rejects() -> None:
    route = _route(_render({**STANDARD, "canary.enabled": True, "canary.storageUri": V2}))
    names = {"yolov5", "yolov5-canary"}
    assert gateway_api.route_errors(route, names) == []

    def broken(edit) -> list[str]:
        bad = copy.deepcopy(route)
        edit(bad)
        return gateway_api.route_errors(bad, names)

    refs = ["spec", "rules", 0, "backendRefs"]

    def at(obj: Any, path: list[Any]) -> Any:
        for key in path:
            obj = obj[key]
        return obj

    cases = [
        (lambda r: at(r, refs)[1].update(weight=20), "sum to 110"),
        (lambda r: at(r, refs)[0].pop("port"), "Must have port"),
        (lambda r: at(r, refs)[0].update(weight=-1), "less than the minimum"),
        (lambda r: at(r, refs)[0].update(weigth=5), "'weigth' was unexpected"),
        (lambda r: at(r, refs)[1].update(name="other-predictor"), "not one of the predictors"),
        (lambda r: r["spec"].update(hostname=["x"]), "'hostname' was unexpected"),
        (lambda r: r["spec"].update(hostnames=["Bad_Host"]), "does not match"),
        (lambda r: r.update(apiVersion="gateway.networking.k8s.io/v1beta2"), "was expected"),
        (lambda r: at(r, ["spec", "rules", 0, "timeouts"]).update(request="1 minute"), "match"),
        (lambda r: at(r, ["spec", "rules", 0, "matches", 0, "path"]).update(value="v2"), "path"),
        (lambda r: r["spec"].update(parentRefs=[]), "no parentRefs"),
        (lambda r: r["metadata"].update(name="Yolov5_split"), "metadata"),
    ]
    for edit, message in cases:
        errors = broken(edit)
        assert any(message in e for e in errors), (message, errors)


# --------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------


def test_docs_give_promote_and_roll_back_commands() -> None:
    section = DOCS[DOCS.index("## 9. Canary rollouts") :]
    section = section[: section.index("\n## ", 3)]
    for needle in (
        "--set canary.trafficPercent=100",
        "--set model.storageUri=",
        "--set canary.enabled=false",
        "--set canary.trafficPercent=0",
        '--set canary.storageUri=""',
        "kubectl patch isvc",
        "canaryTrafficPercent",
        "kubectl patch httproute",
        "manifests/canary/",
    ):
        assert needle in section, needle
    # Every value the section names exists in the chart.
    for path in set(re.findall(r"--set ((?:canary|httpRoute|model)\.[A-Za-z.]+)=", section)):
        node: Any = VALUES
        for key in path.split("."):
            assert key in node, path
            node = node[key]


def test_notes_describe_the_canary() -> None:
    notes = tools.helm_notes(["ci/canary-standard-values.yaml"])
    assert "Canary: 10 % of the requests go to the candidate" in notes
    assert "InferenceService yolov5-yolov5-kserve-canary" in notes
    assert "kubectl get httproute -n models yolov5-yolov5-kserve-split" in notes
    notes = tools.helm_notes(["ci/canary-knative-values.yaml"])
    assert "Canary: 10 % of the requests go to the candidate" in notes
    assert "PREV / LATEST" in notes and "httproute" not in notes
    assert "Canary" not in tools.helm_notes()


def test_candidate_name_fits_kserve_limits() -> None:
    """KServe names the candidate's objects "<name>-canary-predictor": at most 63 chars."""
    objects = tools.render(
        set_values={"canary.enabled": True, "canary.storageUri": V2, "httpRoute.enabled": True},
        release="a" * 53,  # helm's longest release name
    )
    isvcs = _isvcs(objects)
    assert len(isvcs) == 2
    for name, isvc in isvcs.items():
        assert len(f"{name}-predictor") <= 63, name
        assert not kserve_rules.webhook_errors(isvc)
    assert not gateway_api.route_errors(_route(objects), set(isvcs))
