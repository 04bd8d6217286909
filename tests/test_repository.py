"""Several models, versions, and load/unload at run time (the V2 repository extension)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from predictor import protowire
from predictor.checkpoint import save_checkpoint
from predictor.runtime.architecture import build_model, yolov5_spec
from tests.serving import REPO, Server, running_server
from tests.support import random_image, save_responsive_checkpoint, v2_body


def write_repository(root: Path) -> Path:
    """Three architectures, class counts and image sizes; `traffic` has two versions."""
    save_responsive_checkpoint(root / "shapes" / "best.pt", nc=3, names=["o", "x", "v"])
    focus = root / "legacy"
    save_responsive_checkpoint(focus / "last.pt", nc=2, layout="v5", names=["a", "b"])
    (focus / "config.yaml").write_text("img_size: 160\nnames: [cat, dog]\nconf_threshold: 0.3\n")
    for version, seed in (("1", 1), ("2", 2)):
        save_responsive_checkpoint(
            root / "traffic" / version / "model.pt",
            nc=4,
            layout="v6-p6",
            names=["car", "bus", "bike", "van"],
            seed=seed,
        )
    (root / "traffic" / "config.yaml").write_text("img_size: 128\n")
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("repo") / "models")


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Server]:
    args = ("--img_size", "128", "--max_loaded_models", "4")
    with running_server(repository, *args, model_name="shapes") as server:
        yield server


def jpeg(seed: int) -> bytes:
    return cv2.imencode(".jpg", random_image(140, 180, seed))[1].tobytes()


def infer(server: Server, model: str, version: str | None = None, **parameters) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = v2_body(jpeg(3), parameters=parameters)
    return httpx.post(server.http_url + path, json=body, timeout=60)


def outputs(response: httpx.Response) -> dict[str, list]:
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


# -- discovery -------------------------------------------------------------------------


def test_per_model_config_applies(server: Server) -> None:
    text = httpx.get(f"{server.http_url}/metrics").text
    assert re.search(
        r'yolov5_model_info\{backend="\w+",classes="cat,dog",[^}]*input_shape="160x160"', text
    )
    assert re.search(
        r'yolov5_model_info\{backend="\w+",classes="o,x,v",[^}]*input_shape="128x128"', text
    )
    legacy = outputs(infer(server, "legacy"))
    count = legacy["num_detections"][0]
    assert count > 0 and min(legacy["scores"][:count]) > 0.3  # its config's conf_threshold


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("img_sise: 320\n", "unknown settings ['img_sise']"),
        ("letterbox: diagonal\n", "letterbox must be square or rect"),
        ("conf_threshold: 2\n", "conf_threshold"),
        ("names: 3\n", "names must be"),
        (": : :\n", "not valid YAML"),
    ],
)
def test_bad_configs_stop_startup_with_a_clear_error(
    tmp_path: Path, config: str, message: str
) -> None:
    model = build_model(yolov5_spec("n", 1, width_multiple=0.125))
    save_checkpoint(tmp_path / "m" / "best.pt", model)
    (tmp_path / "m" / "config.yaml").write_text(config)
    command = [sys.executable, "-m", "predictor", "--model_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "config.yaml" in result.stderr and message in result.stderr


# -- serving several models ------------------------------------------------------------


def test_lists_every_model(server: Server) -> None:
    listed = httpx.get(f"{server.http_url}/v2/models").json()["models"]
    assert sorted(listed) == ["legacy", "shapes", "traffic"]


@pytest.mark.parametrize(
    ("model", "names"),
    [
        ("shapes", ["o", "x", "v"]),
        ("legacy", ["cat", "dog"]),
        ("traffic", ["car", "bus", "bike", "van"]),
    ],
)
def test_each_model_answers_with_its_own_labels(server: Server, model: str, names) -> None:
    assert httpx.get(f"{server.http_url}/v2/models/{model}/labels").json()["labels"] == names
    result = outputs(infer(server, model))
    count = result["num_detections"][0]
    assert count > 0
    assert set(result["labels"][:count]) <= set(names)
    assert max(result["classes"]) < len(names)


def test_versions_are_addressable(server: Server) -> None:
    metadata = httpx.get(f"{server.http_url}/v2/models/traffic").json()
    assert metadata["versions"] == ["1", "2"]
    default = infer(server, "traffic")
    assert default.json()["model_version"] == "2"
    one, two = outputs(infer(server, "traffic", "1")), outputs(infer(server, "traffic", "2"))
    assert outputs(default) == two
    assert one != two, "the two versions hold different weights"
    assert httpx.get(f"{server.http_url}/v2/models/traffic/versions/1/ready").json()["ready"]
    assert infer(server, "traffic", "7").status_code == 404
    assert httpx.get(f"{server.http_url}/v2/models/traffic/versions/7").status_code == 404


def test_grpc_selects_a_version(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg(3)], dtype=object))
    scores = {}
    for version in ("1", "2"):
        result = client.infer("traffic", [tensor], model_version=version)
        assert result.get_response().model_version == version
        scores[version] = result.as_numpy("scores")
    expected = outputs(infer(server, "traffic", "1"))["scores"]
    np.testing.assert_allclose(scores["1"].ravel(), expected, atol=1e-5)


def test_grpc_readiness_and_metadata_know_versions(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    assert client.is_model_ready("traffic", "2") and client.is_model_ready("traffic")
    assert client.get_model_metadata("traffic", "1").versions == ["1", "2"]
    for call in (client.is_model_ready, client.get_model_metadata):
        with pytest.raises(InferenceServerException) as raised:
            call("traffic", "9")
        assert raised.value.status() == "StatusCode.NOT_FOUND", raised.value
        assert "model 'traffic' has no version '9'" in raised.value.message()


def test_per_model_metrics(server: Server) -> None:
    infer(server, "shapes")
    infer(server, "legacy")
    text = httpx.get(f"{server.http_url}/metrics").text
    for model in ("shapes", "legacy"):
        assert f'yolov5_images_total{{model="{model}"}}' in text
    assert re.search(r'yolov5_model_info\{backend="\w+",classes="cat,dog"', text)
    assert 'model="traffic",precision="fp32",version="1"' in text


# -- load and unload at run time -------------------------------------------------------


def rss(server: Server) -> float:
    text = httpx.get(f"{server.http_url}/metrics").text
    return float(re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M).group(1))


def test_unload_and_load_round_trip_frees_memory(server: Server, repository: Path) -> None:
    big = repository / "big"
    save_checkpoint(big / "yolov5s.pt", build_model(yolov5_spec("s", nc=80)))
    try:
        before = rss(server)
        load = httpx.post(f"{server.http_url}/v2/repository/models/big/load", timeout=300)
        assert load.status_code == 200, load.text
        assert httpx.get(f"{server.http_url}/v2/models/big/ready").status_code == 200
        loaded = rss(server)
        assert outputs(infer(server, "big"))["num_detections"] is not None
        unload = httpx.post(f"{server.http_url}/v2/repository/models/big/unload", timeout=60)
        assert unload.status_code == 200, unload.text
        assert httpx.get(f"{server.http_url}/v2/models/big/ready").status_code == 404
        after = rss(server)
        mib = [round(x / 2**20) for x in (before, loaded, after)]
        print(f"RSS MiB: before {mib[0]}, loaded {mib[1]}, unloaded {mib[2]}")
        assert loaded - before > 20 * 2**20, "a yolov5s should take tens of MiB"
        assert after < loaded - 0.5 * (loaded - before), "unload did not give memory back"
        assert outputs(infer(server, "shapes"))["num_detections"][0] > 0
    finally:
        for path in big.iterdir():
            path.unlink()
        big.rmdir()


def test_a_broken_model_leaves_the_others_serving(server: Server, repository: Path) -> None:
    broken = repository / "broken"
    broken.mkdir()
    (broken / "model.pt").write_bytes(b"definitely not a checkpoint")
    try:
        response = httpx.post(f"{server.http_url}/v2/repository/models/broken/load", timeout=60)
        assert response.status_code == 400, response.text
        assert "not a readable PyTorch checkpoint" in response.json()["error"]
        with pytest.raises(InferenceServerException) as raised:
            grpcclient.InferenceServerClient(server.grpc_target).load_model("broken")
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "not a readable PyTorch checkpoint" in raised.value.message()
        assert httpx.get(f"{server.http_url}/v2/models/broken/ready").status_code == 404
        for model in ("shapes", "legacy", "traffic"):
            assert outputs(infer(server, model))["num_detections"][0] > 0
    finally:
        (broken / "model.pt").unlink()
        broken.rmdir()


def test_loads_are_bounded(server: Server, repository: Path) -> None:
    extra = [repository / f"extra{i}" for i in range(2)]
    for path in extra:
        save_responsive_checkpoint(path / "m.pt", nc=1, names=["thing"])
    try:
        first = httpx.post(f"{server.http_url}/v2/repository/models/extra0/load", timeout=120)
        assert first.status_code == 200, first.text
        second = httpx.post(f"{server.http_url}/v2/repository/models/extra1/load", timeout=120)
        assert second.status_code == 400 and "--max_loaded_models=4" in second.text
    finally:
        httpx.post(f"{server.http_url}/v2/repository/models/extra0/unload", timeout=60)
        for path in extra:
            for file in path.iterdir():
                file.unlink()
            path.rmdir()


@pytest.mark.parametrize("name", ["%2E%2E", ".hidden"])
def test_load_stays_inside_the_repository(server: Server, repository: Path, name: str) -> None:
    outside = repository.parent / "outside.pt"  # would be found through ".." without the check
    save_responsive_checkpoint(outside, nc=1, names=["thing"])
    (repository / ".hidden").mkdir(exist_ok=True)
    save_responsive_checkpoint(repository / ".hidden" / "m.pt", nc=1, names=["thing"])
    try:
        response = httpx.post(f"{server.http_url}/v2/repository/models/{name}/load", timeout=60)
        assert response.status_code == 404, response.text
        listed = httpx.get(f"{server.http_url}/v2/models").json()["models"]
        assert sorted(listed) == ["legacy", "shapes", "traffic"]
    finally:
        outside.unlink()
        (repository / ".hidden" / "m.pt").unlink()
        (repository / ".hidden").rmdir()


def test_grpc_clients_load_and_unload(server: Server, repository: Path) -> None:
    """tritonclient's repository calls, as a gRPC-only client (or Triton tooling) makes them."""
    client = grpcclient.InferenceServerClient(server.grpc_target)
    extra = repository / "extra_grpc"
    save_responsive_checkpoint(extra / "m.pt", nc=1, names=["thing"])
    listed = f"{server.http_url}/v2/models"
    try:
        client.load_model("extra_grpc")
        assert client.is_model_ready("extra_grpc")
        client.unload_model("extra_grpc")
        assert "extra_grpc" not in httpx.get(listed).json()["models"]
        # kserve's own proto numbers the model name 1 (Triton's: 2)
        with grpc.insecure_channel(server.grpc_target) as channel:
            for method in ("RepositoryModelLoad", "RepositoryModelUnload"):
                call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
                call(protowire.field(1, b"extra_grpc"), timeout=120)
                loaded = "extra_grpc" in httpx.get(listed).json()["models"]
                assert loaded == (method == "RepositoryModelLoad")
    finally:
        (extra / "m.pt").unlink()
        extra.rmdir()
    for call in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException) as raised:
            call("nosuch")
        assert raised.value.status() == "StatusCode.NOT_FOUND", raised.value
    assert httpx.post(f"{server.http_url}/v2/repository/models/nosuch/load").status_code == 404
    assert httpx.post(f"{server.http_url}/v2/repository/models/nosuch/unload").status_code == 404


def test_repository_index_lists_loaded_and_loadable_models(
    server: Server, repository: Path
) -> None:
    spare = repository / "spare"
    save_responsive_checkpoint(spare / "m.pt", nc=1, names=["thing"])
    try:
        rest = httpx.post(f"{server.http_url}/v2/repository/index").json()
        states = {(row["name"], row["version"]): row["state"] for row in rest}
        assert states[("traffic", "1")] == states[("traffic", "2")] == "READY"
        assert states[("shapes", "1")] == "READY" and states[("spare", "")] == "UNAVAILABLE"
        ready = httpx.post(f"{server.http_url}/v2/repository/index", json={"ready": True}).json()
        assert ready == [row for row in rest if row["state"] == "READY"]
        http = httpclient.InferenceServerClient(server.http_host)
        assert http.get_model_repository_index() == rest
        grpc_index = grpcclient.InferenceServerClient(server.grpc_target)
        listed = grpc_index.get_model_repository_index().models
        assert [(m.name, m.version, m.state) for m in listed] == [
            (row["name"], row["version"], row["state"]) for row in rest
        ]
        bad = httpx.post(f"{server.http_url}/v2/repository/index", content=b"[1]")
        assert bad.status_code == 400
    finally:
        (spare / "m.pt").unlink()
        spare.rmdir()
