"""Command-line options for the whole suite (pytest reads them before collecting anything)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import E2E_ENV


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("e2e", "live Kubernetes cluster tests (tests/e2e)")
    group.addoption(
        "--e2e",
        action="store_true",
        default=False,
        help="run tests that install the chart on the current kubeconfig context "
        f"(or set {E2E_ENV}=1)",
    )
    group.addoption(
        "--e2e-namespace", default="yolov5-kserve-e2e", help="namespace to install into"
    )
    group.addoption(
        "--e2e-release", default="yolov5-e2e", help="helm release and InferenceService name"
    )
    group.addoption(
        "--e2e-values", action="append", default=[], metavar="FILE", help="extra helm values file"
    )
    group.addoption(
        "--e2e-set", action="append", default=[], metavar="KEY=VALUE", help="extra helm --set"
    )
    group.addoption(
        "--e2e-timeout", type=int, default=900, help="seconds to wait for the InferenceService"
    )
    group.addoption("--e2e-image", default=None, metavar="JPEG", help="photo to detect objects in")
    group.addoption("--e2e-keep", action="store_true", default=False, help="do not uninstall")
