"""The chart configurations the suite renders and validates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    id: str
    values_files: tuple[str, ...] = ()
    set_values: dict[str, Any] = field(default_factory=dict)
    cloud: str | None = None  # GPU node preset expected ("eks"/"gke"), None for CPU
    storage_scheme: str = "https"
    # Knative feature flags (config-features) this configuration legitimately needs.
    knative_flags: frozenset[str] = frozenset()
    # Standard-mode canary: spec.canary in the one InferenceService.
    canary: bool = False
    pod_monitor: bool = False

    @property
    def runtime(self) -> bool:
        """The ServingRuntime form (every case but the custom-container one)."""
        return "ci-pvc" not in self.id

    @property
    def kinds(self) -> list[str]:
        """The kinds `helm template` renders for this case (sorted)."""
        kinds = ["InferenceService"]
        kinds += ["ServiceAccount", "ServingRuntime"] if self.runtime else []
        # The GPU profiles' disruption budget (Standard mode: Knative owns its replicas).
        kinds += (
            ["PodDisruptionBudget"]
            if self.cloud
            and self.values_files[:1] in (("values-eks.yaml",), ("values-gke.yaml",))
            and not self.knative
            else []
        )
        kinds += ["PodMonitor"] if self.pod_monitor else []
        return sorted(kinds)

    @property
    def knative(self) -> bool:
        return self.set_values.get("deploymentMode") == "Knative" or any(
            "knative" in f for f in self.values_files
        )


_GPU_KNATIVE_FLAGS = frozenset(
    {"kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations"}
)

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"values_files": (), "cloud": None, "storage_scheme": "https"},
    "eks": {"values_files": ("values-eks.yaml",), "cloud": "eks", "storage_scheme": "s3"},
    "gke": {"values_files": ("values-gke.yaml",), "cloud": "gke", "storage_scheme": "gs"},
}

CASES: list[Case] = [
    Case(
        id=f"{profile}-{mode}",
        values_files=spec["values_files"],
        set_values={"deploymentMode": mode},
        cloud=spec["cloud"],
        storage_scheme=spec["storage_scheme"],
        knative_flags=_GPU_KNATIVE_FLAGS if spec["cloud"] else frozenset(),
    )
    for profile, spec in PROFILES.items()
    for mode in ("Standard", "Knative")
] + [
    Case(id="ci-knative-scale-to-zero", values_files=("ci/knative-scale-to-zero-values.yaml",)),
    Case(
        id="ci-keda",
        values_files=("ci/keda-values.yaml",),
        cloud="eks",
        pod_monitor=True,
    ),
    Case(
        id="eks-keda-preset",
        values_files=("values-eks.yaml", "values-keda.yaml"),
        set_values={"autoscaling.keda.prometheusAddress": "http://prometheus.monitoring:9090"},
        cloud="eks",
        storage_scheme="s3",
        pod_monitor=True,
    ),
    Case(
        id="ci-pvc-airgapped",
        values_files=("ci/pvc-airgapped-values.yaml",),
        storage_scheme="pvc",
    ),
    Case(id="ci-canary-knative", values_files=("ci/canary-knative-values.yaml",)),
    Case(id="ci-canary-standard", values_files=("ci/canary-standard-values.yaml",), canary=True),
    Case(
        id="eks-canary-standard",
        values_files=("values-eks.yaml",),
        set_values={
            "canary.enabled": True,
            "canary.trafficPercent": 25,
            "canary.storageUri": "s3://my-models-bucket/yolov5/yolov5s-v2/",
        },
        cloud="eks",
        storage_scheme="s3",
        canary=True,
    ),
    Case(
        id="gke-canary-knative",
        values_files=("values-gke.yaml",),
        set_values={
            "deploymentMode": "Knative",
            "canary.enabled": True,
            "canary.trafficPercent": 25,
            "canary.storageUri": "gs://my-models-bucket/yolov5/yolov5s-v2/",
        },
        cloud="gke",
        storage_scheme="gs",
        knative_flags=_GPU_KNATIVE_FLAGS,
    ),
]
CASE_IDS = [c.id for c in CASES]
