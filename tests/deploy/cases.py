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
    ),
    Case(
        id="ci-pvc-airgapped",
        values_files=("ci/pvc-airgapped-values.yaml",),
        storage_scheme="pvc",
    ),
]
CASE_IDS = [c.id for c in CASES]
