"""Canary / A-B rollout of a new checkpoint version (chart values `canary.*`).

Knative mode: one InferenceService whose predictor carries KServe's `canaryTrafficPercent`
(a field of the v1beta1 CRD); the changed model makes the new revision the candidate.
Standard mode (KServe >= 0.21): the InferenceService's own `spec.canary[]`. KServe runs the
candidate as Deployment `<name>-<canary.name>-predictor` with fixed replicas and, once its
pods are ready, weighs the HTTPRoute it manages (applyCanaryWeights in
pkg/controller/v1beta1/inferenceservice/reconcilers/ingress/httproute_reconciler.go): no
route of ours can send traffic to a Service that is not there yet.

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

from . import checks, kserve_rules, kserve_runtime, kube_schema, tools, validate

pytestmark = pytest.mark.usefixtures("helm")

VALUES = yaml.safe_load((tools.CHART_DIR / "values.yaml").read_text())
V1 = "s3://models/yolov5/detector/v1/"
V2 = "s3://models/yolov5/detector/v2/"
STANDARD = {"deploymentMode": "Standard", "model.storageUri": V1}
KNATIVE = {"deploymentMode": "Knative", "model.storageUri": V1}
DOCS = (tools.REPO_ROOT / "docs" / "deploy.md").read_text()


def _render(values: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    return tools.render(set_values={"fullnameOverride": "yolov5", **values}, **kwargs)


def _isvc(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return tools.one(objects, "InferenceService")


def _assert_valid(objects: list[dict[str, Any]], knative: bool) -> None:
    validate.assert_valid(objects, set())
    isvc = _isvc(objects)
    stable, *canaries = validate.predictor_forms(isvc, validate.runtimes_for(objects))
    checks.assert_all(stable, "yolov5")
    for pod in canaries:
        checks.assert_probes(pod, "yolov5")
        checks.assert_security(pod)
    assert checks.is_knative(stable) == knative


def _set_model(isvc: dict[str, Any], uri: str) -> None:
    checks.predictor(isvc)["model"]["storageUri"] = uri


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
    assert sorted(o["kind"] for o in objects) == [
        "InferenceService", "ServiceAccount", "ServingRuntime"
    ]  # fmt: skip
    _assert_valid(objects, knative=True)
    isvc = _isvc(objects)
    # 0 (roll back) must be rendered, not dropped as a false value.
    assert checks.predictor(isvc)["canaryTrafficPercent"] == percent
    assert kserve_rules.storage_uri(isvc) == V2, "the new revision serves the candidate"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    pod = kserve_runtime.custom_form(isvc, validate.runtimes_for(objects))
    errors, flags = kserve_rules.knative_errors(pod)
    assert not errors and not flags, (errors, flags)


def test_knative_without_canary_has_no_canary_field() -> None:
    isvc = _isvc(_render(KNATIVE))
    assert "canaryTrafficPercent" not in checks.predictor(isvc)
    assert kserve_rules.storage_uri(isvc) == V1
    # Tag routing is on whether or not a canary runs: starting one adds no revision.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    plain = _isvc(_render({**KNATIVE, "canary.tagRouting": False}))
    assert "serving.kserve.io/enable-tag-routing" not in plain["metadata"]["annotations"]


def test_knative_canary_changes_only_the_model_and_the_split() -> None:
    stable = _isvc(_render(KNATIVE))
    canary = _isvc(_render({**KNATIVE, "canary.enabled": True, "canary.storageUri": V2}))
    assert canary["metadata"] == stable["metadata"]
    expected = copy.deepcopy(stable)
    expected["spec"]["predictor"]["canaryTrafficPercent"] = 10
    _set_model(expected, V2)
    assert canary == expected


def test_knative_promote_and_roll_back_steps() -> None:
    """docs/deploy.md: each step changes only canaryTrafficPercent, except the one that
    moves the candidate to the stable checkpoint while it gets 0 %."""
    canary = {**KNATIVE, "canary.enabled": True, "canary.storageUri": V2}

    def isvc(values: dict[str, Any]) -> dict[str, Any]:
        return _isvc(_render(values))

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
# Standard: spec.canary
# --------------------------------------------------------------------------------------


def test_crd_has_spec_canary() -> None:
    spec = kube_schema.stored_crd_schema()["openAPIV3Schema"]["properties"]["spec"]
    canary = spec["properties"]["canary"]["items"]
    assert set(canary["required"]) == {"predictor", "trafficPercent"}
    assert canary["properties"]["trafficPercent"]["maximum"] == 100


@pytest.mark.parametrize("percent", [0, 10, 50, 100])
@pytest.mark.parametrize("runtime", [True, False], ids=["runtime", "custom-container"])
def test_standard_canary(percent: int, runtime: bool) -> None:
    objects = _render(
        {
            **STANDARD,
            "servingRuntime.enabled": runtime,
            **({} if runtime else {"model.name": "yolov5"}),
            "canary.enabled": True,
            "canary.storageUri": V2,
            "canary.trafficPercent": percent,
        }
    )
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["InferenceService", "ServiceAccount"] + (["ServingRuntime"] if runtime else [])
    _assert_valid(objects, knative=False)
    isvc = _isvc(objects)
    (canary,) = isvc["spec"]["canary"]
    assert canary["trafficPercent"] == percent
    assert canary["predictor"]["name"] == VALUES["canary"]["name"]
    assert "canaryTrafficPercent" not in checks.predictor(isvc), "Knative's field only"
    assert kserve_rules.storage_uri(isvc) == V1
    (candidate,) = kserve_runtime.canary_predictors(isvc)
    assert kserve_rules.storage_uri(candidate) == V2


def test_standard_candidate_is_the_stable_predictor_but_for_the_model() -> None:
    """What KServe runs for the canary (stable fields merged with the canary's) differs
    from the stable predictor in the model only, and in the autoscaling KServe drops."""
    stable = _isvc(_render(STANDARD))
    isvc = _isvc(_render({**STANDARD, "canary.enabled": True, "canary.storageUri": V2}))
    without_canary = copy.deepcopy(isvc)
    without_canary["spec"].pop("canary")
    assert without_canary == stable, "starting a canary leaves the stable predictor alone"
    (candidate,) = kserve_runtime.canary_predictors(isvc)
    _set_model(candidate, V1)
    expected = kserve_runtime.canary_free(stable)
    for field in kserve_runtime.CANARY_AUTOSCALING_FIELDS:
        checks.predictor(expected).pop(field, None)
    checks.predictor(candidate).pop("name")
    assert candidate == expected


def test_standard_promote_and_roll_back_steps() -> None:
    canary = {**STANDARD, "canary.enabled": True, "canary.storageUri": V2}
    # Promote: all traffic to the candidate, the stable predictor rolls to it, end.
    full = _isvc(_render({**canary, "canary.trafficPercent": 100}))
    moved = _isvc(_render({**canary, "canary.trafficPercent": 100, "model.storageUri": V2}))
    done = _isvc(_render({**STANDARD, "model.storageUri": V2}))
    assert full["spec"]["canary"][0]["trafficPercent"] == 100
    assert kserve_rules.storage_uri(moved) == V2
    assert kserve_runtime.canary_free(moved) == done
    # Roll back: no traffic to the candidate, then it goes; the stable one never changed.
    zero = _isvc(_render({**canary, "canary.trafficPercent": 0}))
    ended = _isvc(_render(STANDARD))
    assert zero["spec"]["canary"][0]["trafficPercent"] == 0
    assert kserve_runtime.canary_free(zero) == ended


def test_canary_rules_reject() -> None:
    isvc = _isvc(_render({**STANDARD, "canary.enabled": True, "canary.storageUri": V2}))
    assert kserve_rules.webhook_errors(isvc) == []

    def broken(edit) -> list[str]:
        bad = copy.deepcopy(isvc)
        edit(bad)
        return kserve_rules.webhook_errors(bad)

    cases = [
        (lambda i: i["spec"]["canary"][0]["predictor"].update(maxReplicas=3), "maxReplicas"),
        (lambda i: i["spec"]["canary"][0]["predictor"].update(name=""), "names"),
        (lambda i: i["spec"]["canary"].append(copy.deepcopy(i["spec"]["canary"][0])), "names"),
        (lambda i: i["spec"]["canary"][0].update(trafficPercent=101), "<= 100"),
        (
            lambda i: i["metadata"]["annotations"].update(
                {kserve_rules.DEPLOYMENT_MODE: "Knative"}
            ),
            "only supported in Standard",
        ),
        (lambda i: i["spec"]["predictor"]["model"].pop("storageUri"), "stable predictor"),
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
        "spec.canary",
        "manifests/canary/",
    ):
        assert needle in section, needle
    # Every value the section names exists in the chart.
    for path in set(re.findall(r"--set ((?:canary|model)\.[A-Za-z.]+)=", section)):
        node: Any = VALUES
        for key in path.split("."):
            assert key in node, path
            node = node[key]


def test_notes_describe_the_canary() -> None:
    notes = tools.helm_notes(["ci/canary-standard-values.yaml"])
    assert "Canary: 10 % of the requests go to the candidate" in notes
    assert "Deployment yolov5-yolov5-kserve-candidate-predictor" in notes
    notes = tools.helm_notes(["ci/canary-knative-values.yaml"])
    assert "Canary: 10 % of the requests go to the candidate" in notes
    assert "PREV / LATEST" in notes
    assert "Canary" not in tools.helm_notes()


def test_candidate_name_fits_kserve_limits() -> None:
    """KServe names the candidate's objects "<name>-<canary.name>-predictor": <= 63 chars."""
    canary = {"canary.enabled": True, "canary.storageUri": V2}
    release = "a" * 53  # helm's longest release name: a 45-character InferenceService
    proc = tools.helm_template(set_values=canary, release=release, check=False)
    assert proc.returncode != 0
    assert "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-candidate-predictor" in proc.stderr
    assert "65 characters (at most 63)" in proc.stderr
    isvc = _isvc(tools.render(set_values={**canary, "canary.name": "v2"}, release=release))
    name = f"{isvc['metadata']['name']}-{isvc['spec']['canary'][0]['predictor']['name']}"
    assert len(f"{name}-predictor") == 58
    assert not kserve_rules.webhook_errors(isvc)
