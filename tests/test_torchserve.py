"""Coming from TorchServe: an archive made by torch-model-archiver serves with one command,
and TorchServe-style clients (raw body, PUT, multipart img1/img2) get V2's detections."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import pytest

from predictor.mar import MANIFEST
from tests.serving import REPO, Server, running_command, running_server
from tests.support import (
    loud_handler,
    make_archive,
    random_image,
    save_responsive_checkpoint,
    v2_body,
)

NAMES = ["person", "car", "dog"]
SERVE = ("--img_size", "128")


def jpeg(seed: int, height: int = 140, width: int = 180) -> bytes:
    return cv2.imencode(".jpg", random_image(height, width, seed))[1].tobytes()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkpoint, a handler that must never be imported, and the marker it would leave."""
    root = tmp_path_factory.mktemp("torchserve")
    save_responsive_checkpoint(root / "src" / "yolov5x.pt", names=NAMES)
    loud_handler(root / "src" / "custom_handler.py", root / "handler-was-imported")
    yield root
    assert not (root / "handler-was-imported").exists(), "the archive's handler was imported"


def archive(workdir: Path, store: Path, **kw: Any) -> Path:
    src = workdir / "src"
    return make_archive(src / "yolov5x.pt", src / "custom_handler.py", store, **kw)


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[Server]:
    """The tutorial's archive, served with one command (no --model_name)."""
    mar = archive(workdir, workdir / "model_store")
    cache = workdir / "cache"
    args = ("--model_dir", str(mar), "--cache_dir", str(cache), *SERVE)
    with running_command(*args, model_name="servemodel", log_dir=workdir) as server:
        yield server


def v2_detections(
    server: Server, images: list[bytes], model: str = "servemodel", version: str = "1.0", **params
) -> list[list[dict[str, Any]]]:
    """The V2 answer for `images`, as TorchServe-route detections."""
    path = f"/v2/models/{model}/versions/{version}/infer"
    response = httpx.post(server.http_url + path, json=v2_body(*images, parameters=params))
    assert response.status_code == 200, response.text
    out = {o["name"]: o for o in response.json()["outputs"]}
    width = out["scores"]["shape"][1]
    answer = []
    for i, count in enumerate(out["num_detections"]["data"]):
        row = range(i * width, i * width + count)
        answer.append(
            [
                {
                    "box": out["boxes"]["data"][4 * k : 4 * k + 4],
                    "score": out["scores"]["data"][k],
                    "class_id": out["classes"]["data"][k],
                    "label": out["labels"]["data"][k],
                }
                for k in row
            ]
        )
    return answer


def post(server: Server, path: str, method: str = "POST", **kw: Any) -> httpx.Response:
    return httpx.request(method, server.http_url + path, timeout=60, **kw)


# -- the archive, served ---------------------------------------------------------------


def test_one_command_serves_the_archive_by_its_manifest(server: Server, workdir: Path) -> None:
    ready = httpx.get(f"{server.http_url}/v2/models/servemodel/versions/1.0/ready")
    assert ready.status_code == 200
    log = server.log.read_text()
    assert "handler custom_handler.py ignored (never imported or run)" in log
    extracted = [p for p in (workdir / "cache" / "torchserve").rglob("*") if p.is_file()]
    assert [p.name for p in extracted] == ["yolov5x.pt"]  # the serialized file, nothing else


def test_ping(server: Server) -> None:
    response = httpx.get(f"{server.http_url}/ping")
    assert (response.status_code, response.json()) == (200, {"status": "Healthy"})


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("POST", {"content-type": "image/jpeg"}),
        ("POST", {"content-type": "application/octet-stream"}),
        ("PUT", {}),  # curl -T
    ],
)
def test_raw_body_gets_v2_detections(server: Server, method: str, headers: dict) -> None:
    image = jpeg(1)
    response = post(server, "/predictions/servemodel", method, content=image, headers=headers)
    assert response.status_code == 200, response.text
    [expected] = v2_detections(server, [image])
    assert expected  # the comparison means something
    assert response.json() == expected
    assert {d["label"] for d in expected} <= set(NAMES)


def test_multipart_fields_answer_in_field_order(server: Server) -> None:
    first, second = jpeg(2), jpeg(3, 96, 128)
    files = [("img2", ("b.jpg", first, "image/jpeg")), ("img1", ("a.jpg", second, "image/jpeg"))]
    response = post(server, "/predictions/servemodel/1.0", files=files)
    assert response.status_code == 200, response.text
    expected = v2_detections(server, [first, second])
    assert all(expected) and response.json() == expected

    single = post(server, "/predictions/servemodel", files={"data": ("x.jpg", first)})
    assert single.json() == expected[0]  # one field: that image's list


def test_query_parameters_work_as_in_v2(server: Server) -> None:
    image = jpeg(4)
    query = {"conf_threshold": "0.5", "max_det": "5", "classes": "person,dog"}
    response = post(server, "/predictions/servemodel", params=query, content=image)
    [expected] = v2_detections(server, [image], **query)
    assert 0 < len(expected) <= 5
    assert response.json() == expected
    assert {d["class_id"] for d in expected} <= {0, 2}


@pytest.mark.parametrize(
    ("path", "kw", "status", "body"),
    [
        (
            "/predictions/nope",
            {"content": b"x"},
            404,
            {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope"},
        ),
        (
            "/predictions/servemodel/9",
            {"content": b"x"},
            404,
            {
                "code": 404,
                "type": "ModelVersionNotFoundException",
                "message": "Model version: 9 does not exist for model: servemodel",
            },
        ),
        (
            "/predictions/servemodel",
            {"content": b"not an image"},
            400,
            {
                "code": 400,
                "type": "BadRequestException",
                "message": "input 'image'[0]: not a decodable image "
                "(JPEG, PNG, BMP, WebP or TIFF expected)",
            },
        ),
        (
            "/predictions/servemodel",
            {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}},
            400,
            {
                "code": 400,
                "type": "BadRequestException",
                "message": "multipart/form-data without a boundary",
            },
        ),
        (
            "/predictions/servemodel?conf_threshold=high",
            {"content": jpeg(5)},
            400,
            {
                "code": 400,
                "type": "BadRequestException",
                "message": "parameter conf_threshold must be a number, got 'high'",
            },
        ),
    ],
)
def test_errors_have_torchserve_bodies_and_the_server_keeps_serving(
    server: Server, path: str, kw: dict, status: int, body: dict
) -> None:
    response = post(server, path, **kw)
    assert (response.status_code, response.json()) == (status, body)
    assert post(server, "/predictions/servemodel", content=jpeg(6)).status_code == 200


def test_truncated_multipart_is_a_bad_request(server: Server) -> None:
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    content = b'--xyz\r\nContent-Disposition: form-data; name="img1"\r\n\r\n' + jpeg(7)
    response = post(server, "/predictions/servemodel", content=content, headers=headers)
    assert response.status_code == 400
    assert response.json()["message"].endswith("no closing boundary")

    headers = {"content-type": "multipart/form-data; boundary=" + "b" * 100}  # RFC 2046: <= 70
    response = post(server, "/predictions/servemodel", content=content, headers=headers)
    assert response.status_code == 400
    assert response.json()["message"].startswith("malformed multipart/form-data body")


def test_refusals_are_not_logged_as_errors(server: Server) -> None:
    post(server, "/predictions/servemodel", content=b"junk")
    log = server.log.read_text()
    assert '"level": "ERROR"' not in log and "Traceback" not in log


def test_models_list_and_describe(server: Server) -> None:
    listed = httpx.get(f"{server.http_url}/models").json()
    assert listed == {"models": [{"modelName": "servemodel", "modelUrl": "servemodel.mar"}]}
    # TorchServe's paging: a full page carries the next token, even when nothing follows
    assert httpx.get(f"{server.http_url}/models?limit=1").json()["nextPageToken"] == "1"
    assert httpx.get(f"{server.http_url}/models?next_page_token=1").json()["models"] == []

    for path in ("/models/servemodel", "/models/servemodel/1.0", "/models/servemodel/all"):
        [described] = httpx.get(server.http_url + path).json()
        assert described["modelName"] == "servemodel"
        assert described["modelVersion"] == "1.0"
        assert described["modelUrl"] == "servemodel.mar"
        assert described["loadedAtStartup"] is True
        assert described["deviceType"] == "cpu"
        assert len(described["workers"]) == described["minWorkers"] >= 1
        assert {w["status"] for w in described["workers"]} == {"READY"}

    missing = httpx.get(f"{server.http_url}/models/nope")
    assert missing.status_code == 404
    assert missing.json()["type"] == "ModelNotFoundException"


def test_metrics_count_torchserve_requests(server: Server) -> None:
    post(server, "/predictions/servemodel", content=jpeg(8))
    text = httpx.get(f"{server.http_url}/metrics").text
    assert 'yolov5_http_requests_total{path="/predictions/{name}",status="200"}' in text
    assert 'yolov5_inference_requests_total{model="servemodel",outcome="ok"}' in text


def test_request_limits_apply(server: Server, workdir: Path) -> None:
    many = [(f"img{i}", (f"{i}.jpg", b"x")) for i in range(65)]  # --max_images is 64
    response = post(server, "/predictions/servemodel", files=many)
    assert response.status_code == 413
    assert "--max_images=64" in response.json()["message"]


# -- model stores ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(workdir: Path) -> Path:
    """Two archives (zip and tgz), a no-archive directory and this server's own layout."""
    root = workdir / "store"
    archive(workdir, root, name="servemodel", version="1.0")
    archive(workdir, root, archive_format="tgz", name="servemodel", version="2.0")
    archive(workdir, root, archive_format="no-archive", name="shapes", version="3")
    save_responsive_checkpoint(root / "ours" / "best.pt", nc=2, names=["a", "b"])
    return root


def test_model_store_with_repository_load_and_unload(store: Path) -> None:
    args = ("--no-torchserve_api", *SERVE)
    with running_server(store, *args, model_name="shapes") as server:
        url = server.http_url
        index = httpx.post(f"{url}/v2/repository/index", json={"ready": True}).json()
        assert {(row["name"], row["version"]) for row in index} == {
            ("ours", "1"),
            ("servemodel", "1.0"),
            ("servemodel", "2.0"),
            ("shapes", "3"),
        }
        image = jpeg(9)
        assert v2_detections(server, [image], "servemodel", "2.0")
        assert v2_detections(server, [image], "shapes", "3")

        unload = httpx.post(f"{url}/v2/repository/models/servemodel/unload")
        assert unload.status_code == 200
        gone = httpx.post(f"{url}/v2/models/servemodel/infer", json=v2_body(image))
        assert gone.status_code == 404
        load = httpx.post(f"{url}/v2/repository/models/servemodel/load", timeout=120)
        assert load.status_code == 200, load.text
        assert v2_detections(server, [image], "servemodel", "1.0")

        traversal_archive(store / "evil.mar")  # dropped in later: said, the rest serves
        index = httpx.post(f"{url}/v2/repository/index", json={}).json()
        assert any("unsafe member name" in row["reason"] for row in index)
        assert httpx.post(f"{url}/v2/repository/models/ours/load", timeout=120).status_code == 200
        refused = httpx.post(f"{url}/v2/repository/models/servemodel/load")
        assert refused.status_code == 400 and "unsafe member name" in refused.text
        (store / "evil.mar").unlink()

        for path in ("/ping", "/models", "/models/servemodel"):  # --no-torchserve_api
            assert httpx.get(url + path).status_code == 404
        assert httpx.post(f"{url}/predictions/servemodel", content=image).status_code == 404


def test_model_name_renames_a_single_archive(workdir: Path) -> None:
    """KServe's runtime passes --model_name={{.Name}}; storageUri put the archive in a dir.
    With --cache_dir "" the archive is extracted into a temporary directory, removed at exit."""
    mnt = workdir / "mnt-models"
    archive(workdir, mnt)
    with running_server(mnt, *SERVE, "--cache_dir", "", model_name="detector") as server:
        response = post(server, "/predictions/detector/1.0", content=jpeg(10))
        assert response.status_code == 200 and response.json()
        assert post(server, "/predictions/servemodel", content=b"x").status_code == 404
        log = server.log.read_text()
        [temporary] = re.findall(r"archives are extracted into (\S+), removed", log)
        assert list(Path(temporary).rglob("yolov5x.pt"))
    assert not Path(temporary).exists()


def traversal_archive(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr(MANIFEST, '{"model": {"modelName": "m", "serializedFile": "w.pt"}}')
        zipped.writestr("w.pt", b"weights")
        zipped.writestr("../escape.py", b"print('hi')")
    return path


def test_hostile_archive_is_refused_at_start(tmp_path: Path) -> None:
    evil = traversal_archive(tmp_path / "evil.mar")
    command = [sys.executable, "-m", "predictor", "--model_dir", str(evil)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unsafe member name '../escape.py'" in result.stderr
    assert not (tmp_path.parent / "escape.py").exists()
