"""The V2/V1 contract, end to end: the real ModelServer, real clients, every path agreeing."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from predictor import Detections, DetectionSettings, Detector
from predictor.imaging import decode_image
from tests.serving import Server, running_server
from tests.support import save_responsive_checkpoint

NAMES = ["cat", "dog", "bird"]
IMG_SIZE = 256


def scene(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    for _ in range(6):
        x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(10, 80)), y + 40), colour, -1)
    return image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("model")
    save_responsive_checkpoint(model_dir / "unseen.pt", nc=3, names=NAMES)
    return model_dir / "unseen.pt"


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[Server]:
    with running_server(checkpoint.parent, "--img_size", str(IMG_SIZE)) as server:
        yield server


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    jpeg = cv2.imencode(".jpg", scene(1, 300, 400))[1].tobytes()
    png = cv2.imencode(".png", scene(2, 220, 180))[1].tobytes()
    return [jpeg, png]


@pytest.fixture(scope="module")
def expected(checkpoint: Path, images: list[bytes]) -> list[dict[str, np.ndarray]]:
    detector = Detector.load(checkpoint, device="cpu", img_size=IMG_SIZE)
    # Requests below send both images together, as one batch: expect exactly that batch.
    results = detector.detect([decode_image(b) for b in images], DetectionSettings())
    assert all(len(r) > 0 for r in results), "the test model must detect something"
    return [as_dict(r) for r in results]


@pytest.fixture(scope="module")
def expected_alone(checkpoint: Path, images: list[bytes]) -> list[dict[str, np.ndarray]]:
    """The first image's detections when it is sent on its own."""
    detector = Detector.load(checkpoint, device="cpu", img_size=IMG_SIZE)
    return [as_dict(detector.detect([decode_image(images[0])])[0])]


def as_dict(result: Detections) -> dict[str, np.ndarray]:
    return {
        "boxes": result.boxes,
        "scores": result.scores,
        "classes": result.class_ids,
        "labels": result.labels,
    }


def assert_matches(outputs: dict[str, np.ndarray], expected: list[dict[str, np.ndarray]]) -> None:
    assert outputs["num_detections"].tolist() == [len(e["scores"]) for e in expected]
    for i, want in enumerate(expected):
        n = len(want["scores"])
        np.testing.assert_allclose(outputs["boxes"][i, :n], want["boxes"], atol=1e-3)
        np.testing.assert_allclose(outputs["scores"][i, :n], want["scores"], atol=1e-5)
        assert outputs["classes"][i, :n].tolist() == want["classes"].tolist()
        labels = [x.decode() if isinstance(x, bytes) else x for x in outputs["labels"][i, :n]]
        assert labels == want["labels"]
        # padding past this image's detections
        assert (outputs["scores"][i, n:] == 0).all()
        assert (outputs["classes"][i, n:] == -1).all()


OUTPUT_NAMES = ["num_detections", "boxes", "scores", "classes", "labels"]


def http_outputs(result: httpclient.InferResult) -> dict[str, np.ndarray]:
    return {name: result.as_numpy(name) for name in OUTPUT_NAMES}


# -- metadata and health ----------------------------------------------------------------


def test_metadata_declares_the_contract(server: Server) -> None:
    metadata = httpx.get(f"{server.http_url}/v2/models/yolov5").json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert outputs == {
        "num_detections": ("INT32", [-1]),
        "boxes": ("FP32", [-1, -1, 4]),
        "scores": ("FP32", [-1, -1]),
        "classes": ("INT32", [-1, -1]),
        "labels": ("BYTES", [-1, -1]),
    }
    grpc_metadata = grpcclient.InferenceServerClient(server.grpc_target).get_model_metadata(
        "yolov5", as_json=True
    )
    assert [o["name"] for o in grpc_metadata["outputs"]] == OUTPUT_NAMES


def test_class_names_are_discoverable(server: Server) -> None:
    body = httpx.get(f"{server.http_url}/v2/models/yolov5/labels").json()
    assert body == {"name": "yolov5", "version": "1", "labels": NAMES}
    assert httpx.get(f"{server.http_url}/v2/models/other/labels").status_code == 404


def test_health_and_readiness(server: Server) -> None:
    assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.http_url}/v2/models/yolov5/ready").json()["ready"] is True
    assert httpx.get(f"{server.http_url}/v2/models/nope/ready").status_code == 404
    client = grpcclient.InferenceServerClient(server.grpc_target)
    assert client.is_server_live() and client.is_model_ready("yolov5")


# -- every client path returns the same detections ---------------------------------------


def test_tritonclient_http_json_base64(server: Server, images, expected) -> None:
    client = httpclient.InferenceServerClient(server.http_host)
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(
        np.array([base64.b64encode(b) for b in images], dtype=object), binary_data=False
    )
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in OUTPUT_NAMES]
    assert_matches(http_outputs(client.infer("yolov5", [tensor], outputs=outputs)), expected)


def test_tritonclient_http_binary_bytes(server: Server, images, expected) -> None:
    client = httpclient.InferenceServerClient(server.http_host)
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in OUTPUT_NAMES]
    assert_matches(http_outputs(client.infer("yolov5", [tensor], outputs=outputs)), expected)


def test_tritonclient_grpc_bytes(server: Server, images, expected) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    tensor = grpcclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    result = client.infer("yolov5", [tensor])
    assert_matches({n: result.as_numpy(n) for n in OUTPUT_NAMES}, expected)


def test_grpc_takes_an_image_over_kserves_8_mib_default(server: Server) -> None:
    """gRPC messages are limited by --max_request_bytes (64 MiB), not kserve's 8 MiB."""
    noise = np.random.default_rng(3).integers(0, 255, (1800, 1800, 3), dtype=np.uint8)
    png = cv2.imencode(".png", noise)[1].tobytes()
    assert len(png) > 8 * 1024 * 1024
    client = grpcclient.InferenceServerClient(server.grpc_target)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([png], dtype=object))
    result = client.infer("yolov5", [tensor])
    assert result.as_numpy("num_detections").shape == (1,)


def test_raw_uint8_rgb_pixels(server: Server, images, expected_alone) -> None:
    rgb = decode_image(images[0])[..., ::-1]
    client = httpclient.InferenceServerClient(server.http_host)
    tensor = httpclient.InferInput("image", [1, *rgb.shape], "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(rgb[None]), binary_data=True)
    assert_matches(http_outputs(client.infer("yolov5", [tensor])), expected_alone)


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_curl_json_with_any_content_type(server: Server, images, expected, content_type) -> None:
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(images)],
                "datatype": "BYTES",
                "data": [base64.b64encode(b).decode() for b in images],
            }
        ]
    }
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(
        f"{server.http_url}/v2/models/yolov5/infer",
        content=json.dumps(body),
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    outputs = {
        o["name"]: np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else None).reshape(
            o["shape"]
        )
        for o in response.json()["outputs"]
    }
    assert_matches(outputs, expected)


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_v1_predict(server: Server, images, expected, content_type) -> None:
    """curl -d sends the form Content-Type; the body is JSON all the same."""
    body = {"instances": [{"image": {"b64": base64.b64encode(b).decode()}} for b in images]}
    response = httpx.post(
        f"{server.http_url}/v1/models/yolov5:predict",
        content=json.dumps(body),
        headers={"Content-Type": content_type},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    for prediction, want in zip(predictions, expected, strict=True):
        detections = prediction["detections"]
        assert len(detections) == len(want["scores"])
        np.testing.assert_allclose([d["box"] for d in detections], want["boxes"], atol=1e-3)
        np.testing.assert_allclose([d["score"] for d in detections], want["scores"], atol=1e-5)
        assert [d["label"] for d in detections] == want["labels"]
        assert [d["class_id"] for d in detections] == want["classes"].tolist()


# -- requested outputs and parameters ----------------------------------------------------


def test_requested_output_subset_http_and_grpc(server: Server, images, expected_alone) -> None:
    http = httpclient.InferenceServerClient(server.http_host)
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(images[:1], dtype=object))
    result = http.infer(
        "yolov5",
        [tensor],
        outputs=[
            httpclient.InferRequestedOutput("scores", binary_data=True),
            httpclient.InferRequestedOutput("labels", binary_data=False),
        ],
    )
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["scores", "labels"]
    assert result.as_numpy("boxes") is None
    np.testing.assert_allclose(result.as_numpy("scores")[0], expected_alone[0]["scores"], atol=1e-5)

    grpc = grpcclient.InferenceServerClient(server.grpc_target)
    gtensor = grpcclient.InferInput("image", [1], "BYTES")
    gtensor.set_data_from_numpy(np.array(images[:1], dtype=object))
    gresult = grpc.infer("yolov5", [gtensor], outputs=[grpcclient.InferRequestedOutput("classes")])
    assert [o.name for o in gresult.get_response().outputs] == ["classes"]
    assert gresult.as_numpy("classes")[0].tolist() == expected_alone[0]["classes"].tolist()


def _infer_http(server: Server, image: bytes, **parameters) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.http_host)
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=object))
    return http_outputs(client.infer("yolov5", [tensor], parameters=parameters))


def test_parameters_change_detections(server: Server, images, expected_alone) -> None:
    everything = len(expected_alone[0]["scores"])
    strict = _infer_http(server, images[0], conf_threshold=0.9)
    assert strict["num_detections"][0] < everything
    assert (strict["scores"][0][: strict["num_detections"][0]] > 0.9).all()
    assert _infer_http(server, images[0], max_det=2)["num_detections"][0] == min(2, everything)
    only_dogs = _infer_http(server, images[0], classes="dog")
    kept = only_dogs["num_detections"][0]
    assert set(only_dogs["classes"][0][:kept].tolist()) <= {1}
    by_id = _infer_http(server, images[0], classes="1")
    assert by_id["num_detections"][0] == kept


@pytest.mark.parametrize("conf_threshold", ["0.9", 0.9], ids=["string", "double"])
def test_grpc_parameters(server: Server, images, expected_alone, conf_threshold) -> None:
    """tritonclient sends a Python float as Triton's double_param, which kserve's proto lacks."""
    client = grpcclient.InferenceServerClient(server.grpc_target)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(images[:1], dtype=object))
    parameters = {"conf_threshold": conf_threshold, "max_det": 3}
    result = client.infer("yolov5", [tensor], parameters=parameters)
    n = result.as_numpy("num_detections")[0]
    assert 0 < n <= 3 and n <= (expected_alone[0]["scores"] > 0.9).sum()
    assert (result.as_numpy("scores")[0][:n] > 0.9).all()


# -- bad input is a clear 4xx and the server keeps serving --------------------------------


def _post_v2(server: Server, inputs: list[dict], **extra) -> httpx.Response:
    body = {"inputs": inputs, **extra}
    return httpx.post(f"{server.http_url}/v2/models/yolov5/infer", json=body, timeout=60)


@pytest.mark.parametrize(
    ("inputs", "extra", "message"),
    [
        (
            [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}],
            {},
            "decodable",
        ),
        ([{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["***"]}], {}, "base64"),
        ([{"name": "img", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}], {}, "'image'"),
        ([{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}], {}, "datatype"),
        ([{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": ["aGk="]}], {}, "[N]"),
        (
            [{"name": "image", "shape": [2, 2], "datatype": "UINT8", "data": [1, 2, 3, 4]}],
            {},
            "UINT8",
        ),
        ([{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}], {}, "no images"),
    ],
)
def test_bad_inputs_get_400(server: Server, inputs, extra, message) -> None:
    response = _post_v2(server, inputs, **extra)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"conf_threshold": 1.5}, "conf_threshold"),
        ({"iou_threshold": "abc"}, "iou_threshold"),
        ({"max_det": 0}, "max_det"),
        ({"classes": "unicorn"}, "unicorn"),
        ({"classes": "7"}, "7"),
        ({"agnostic_nms": "maybe"}, "agnostic_nms"),
    ],
)
def test_bad_parameters_get_400(server: Server, images, parameters, message) -> None:
    data = [base64.b64encode(images[0]).decode()]
    inputs = [{"name": "image", "shape": [1], "datatype": "BYTES", "data": data}]
    response = _post_v2(server, inputs, parameters=parameters)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_grpc_bad_image_is_invalid_argument(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"\xff\xd8 not really a jpeg"], dtype=object))
    with pytest.raises(InferenceServerException, match="decodable"):
        client.infer("yolov5", [tensor])
    assert client.is_server_live()


def test_inference_does_not_block_the_event_loop(server: Server) -> None:
    big = cv2.imencode(".png", scene(9, 1200, 1600))[1].tobytes()
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [24],
                "datatype": "BYTES",
                "data": [base64.b64encode(big).decode()] * 24,
            }
        ]
    }
    finished: dict[str, float] = {}

    def infer() -> None:
        httpx.post(f"{server.http_url}/v2/models/yolov5/infer", json=body, timeout=120)
        finished["infer"] = time.monotonic()

    worker = threading.Thread(target=infer)
    worker.start()
    time.sleep(0.5)
    live = httpx.get(f"{server.http_url}/v2/health/live", timeout=30)
    finished["live"] = time.monotonic()
    worker.join()
    assert live.status_code == 200
    assert finished["live"] < finished["infer"], "liveness waited for inference"
