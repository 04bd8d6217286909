"""Live-cluster tests: skipped unless `--e2e` (or YOLOV5_KSERVE_E2E=1) and a kubeconfig.

    pytest tests/e2e --e2e                                   # CPU chart defaults
    pytest tests/e2e --e2e -o log_cli=true \\
        --e2e-values helm/yolov5-kserve/values-eks.yaml \\
        --e2e-set image.registry=<registry> --e2e-set model.storageUri=s3://<bucket>/<prefix>/

The cluster needs KServe 0.21 (and Knative Serving for deploymentMode=Knative) and must be
able to pull the image named by the chart values.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

E2E_ENV = "YOLOV5_KSERVE_E2E"


def _kubeconfig_paths() -> list[Path]:
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


def e2e_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("--e2e", default=False)) or os.environ.get(E2E_ENV) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = None
    if not e2e_requested(config):
        reason = f"live-cluster test: pass --e2e (pytest tests/e2e --e2e) or set {E2E_ENV}=1"
    elif not any(p.is_file() for p in _kubeconfig_paths()):
        reason = f"no kubeconfig at {os.pathsep.join(map(str, _kubeconfig_paths()))}"
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
