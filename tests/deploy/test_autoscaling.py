"""The KEDA preset (values-keda.yaml): the replicas it asks for hold the work in flight.

KServe turns the External metric into a KEDA Prometheus trigger with `threshold` =
target.value (getKedaMetrics, pkg/controller/v1beta1/inferenceservice/reconcilers/keda/
keda_reconciler.go). KEDA's Prometheus scaler reports the query result as an AverageValue
metric, so the HPA it drives wants ceil(result / threshold) replicas, within
[minReplicaCount, maxReplicaCount]. Here the query is evaluated over a set of series the
way Prometheus would (label matchers, `=~` fully anchored) and the arithmetic is checked:
N replicas hold at most imagesPerReplica images each.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from . import checks, tools

pytestmark = pytest.mark.usefixtures("helm")

PRESET = ("values-eks.yaml", "values-keda.yaml")
PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
QUERY = re.compile(r"^sum\((?P<metric>\w+)\{(?P<matchers>[^}]*)\}\)$")
MATCHER = re.compile(r'(?P<label>\w+)(?P<op>=~|=)"(?P<value>(?:[^"\\]|\\.)*)"')
METRIC = "yolov5_inflight_images"


def _preset(**extra: object) -> dict:
    values = {"autoscaling.keda.prometheusAddress": PROMETHEUS, **extra}
    return tools.one(tools.render(PRESET, values), "InferenceService")


def _trigger(isvc: dict) -> tuple[str, float]:
    (metric,) = checks.predictor(isvc)["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["backend"] == "prometheus"
    assert metric["external"]["metric"]["serverAddress"] == PROMETHEUS
    assert metric["external"]["target"]["type"] == "Value"
    return metric["external"]["metric"]["query"], float(metric["external"]["target"]["value"])


def evaluate(query: str, series: list[tuple[dict[str, str], float]]) -> float:
    """`sum(metric{l="v", l=~"re"})` over (labels, value) samples, as Prometheus does."""
    match = QUERY.fullmatch(query)
    assert match, f"the preset's query is not a sum over one selector: {query}"
    matchers = [m.groupdict() for m in MATCHER.finditer(match["matchers"])]
    total = 0.0
    for labels, value in series:
        if labels.get("__name__") != match["metric"]:
            continue
        if all(
            labels.get(m["label"]) == m["value"]
            if m["op"] == "="
            else re.fullmatch(m["value"], labels.get(m["label"], ""))
            for m in matchers
        ):
            total += value
    return total


def desired_replicas(result: float, threshold: float, low: int, high: int) -> int:
    """KEDA (AverageValue) through the HPA: ceil(result / threshold) within [low, high]."""
    return min(max(math.ceil(result / threshold), low), high)


def _series(pod: str, value: float, namespace: str = "models") -> tuple[dict[str, str], float]:
    return {"__name__": METRIC, "namespace": namespace, "pod": pod, "model": "x"}, value


def test_preset_renders_the_in_flight_images_trigger() -> None:
    isvc = _preset()
    query, threshold = _trigger(isvc)
    assert threshold == 16
    assert METRIC in query and query.startswith("sum(")
    p = checks.predictor(isvc)
    assert p["minReplicas"] >= 1, "from zero pods nothing would report the metric"
    assert p["autoScaling"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_query_sums_exactly_the_stable_predictor_pods() -> None:
    query, _ = _trigger(_preset())
    ours = [
        _series("yolov5-yolov5-kserve-predictor-7d9f8b6c5d-x2k4p", 5),
        _series("yolov5-yolov5-kserve-predictor-7d9f8b6c5d-9bqzt", 7),
        _series("yolov5-yolov5-kserve-predictor-5f6d7c8b9-mn4lx", 3),  # older ReplicaSet
    ]
    others = [
        # the Standard canary (fixed replicas), another release, another namespace
        _series("yolov5-yolov5-kserve-candidate-predictor-6c7d8e9f0-abcde", 100),
        _series("cars-yolov5-kserve-predictor-7d9f8b6c5d-x2k4p", 100),
        _series("yolov5-yolov5-kserve-predictor-7d9f8b6c5d-x2k4p", 100, namespace="staging"),
        ({"__name__": "yolov5_queue_depth", "namespace": "models",
          "pod": "yolov5-yolov5-kserve-predictor-7d9f8b6c5d-x2k4p"}, 100),
    ]  # fmt: skip
    assert evaluate(query, ours + others) == 15


@pytest.mark.parametrize("images_per_replica", [1, 4, 16, 50])
def test_replicas_hold_at_most_images_per_replica(images_per_replica: int) -> None:
    """For every load: the replicas asked for hold it at <= T images each, and one replica
    fewer would not (unless clamped by min/maxReplicas)."""
    isvc = _preset(**{"autoscaling.keda.imagesPerReplica": images_per_replica})
    query, threshold = _trigger(isvc)
    low, high = checks.predictor(isvc)["minReplicas"], checks.predictor(isvc)["maxReplicas"]
    pod = "yolov5-yolov5-kserve-predictor-7d9f8b6c5d-{}"
    for load in range(0, 10 * images_per_replica * high):
        # The load spread over three running pods, as the gauges report it.
        parts = [load // 3, load // 3, load - 2 * (load // 3)]
        result = evaluate(query, [_series(pod.format(i), v) for i, v in enumerate(parts)])
        assert result == load
        replicas = desired_replicas(result, threshold, low, high)
        if replicas < high:
            assert replicas * images_per_replica >= load
        if low < replicas:
            assert (replicas - 1) * images_per_replica < load
        assert low <= replicas <= high


def test_docs_show_the_arithmetic() -> None:
    docs = (tools.REPO_ROOT / "docs" / "deploy.md").read_text()
    assert "ceil(sum / imagesPerReplica)" in docs
    assert METRIC in docs


def test_predictor_exports_the_metric_the_preset_reads() -> None:
    sources = "".join(p.read_text() for p in Path(tools.REPO_ROOT / "predictor").rglob("*.py"))
    if METRIC not in sources:
        pytest.skip(f"the serving layer does not export {METRIC} on this branch yet")
    assert f'"{METRIC}"' in sources
