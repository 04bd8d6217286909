"""One source of truth: what the cluster objects pass and probe is what the predictor serves.

The container runs the image's ENTRYPOINT (`python -m predictor --model_dir /mnt/models`)
followed by the args of the chart or manifest. Those argv are parsed here with the
predictor's own argument parser (`predictor.server.cli.build_parser`, which includes every
KServe ModelServer flag; asked in a child process, see `predictor_cli`): every flag must be
known by its exact name, every value must parse, and ports, model name and model directory
must agree with the probes and ports.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..support import save_detecting_checkpoint
from . import checks, tools, validate
from .cases import CASE_IDS, CASES, Case
from .dockerfile import parse
from .predictor_cli import predictor_cli

ENTRYPOINT = next(i.exec_form() for i in parse(tools.DOCKERFILE).stage("runtime").all("ENTRYPOINT"))
VALUES = yaml.safe_load((tools.CHART_DIR / "values.yaml").read_text())
VALUES_SCHEMA = json.loads((tools.CHART_DIR / "values.schema.json").read_text())
# The templates that write container args: the runtime's, and the shared helpers.
TEMPLATE = "".join(
    (tools.CHART_DIR / "templates" / name).read_text()
    for name in ("servingruntime.yaml", "_helpers.tpl")
)


def _pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every predictor (stable, canaries) as the pod KServe runs, runtime merged in."""
    runtimes = validate.runtimes_for(objects)
    return [
        form
        for isvc in tools.by_kind(objects, "InferenceService")
        for form in validate.predictor_forms(isvc, runtimes)
    ]


CLI = predictor_cli()
DEFAULTS = CLI.constants()


def _check_argv(isvc: dict[str, Any]) -> argparse.Namespace:
    container = checks.kserve_container(isvc)
    assert "command" not in container, "keep the image ENTRYPOINT (python -m predictor ...)"
    assert ENTRYPOINT[:3] == ["python", "-m", "predictor"]
    args = container.get("args", [])
    flags = {a.split("=", 1)[0] for a in args}
    unknown_flags = flags - CLI.option_strings()
    assert not unknown_flags, f"flags the predictor does not define: {sorted(unknown_flags)}"
    ns = CLI.parse(ENTRYPOINT[3:] + args)

    assert ns.model_dir == DEFAULTS["model_dir"] == "/mnt/models"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ns.http_port == ports["http1"] == checks.http_port(isvc)
    if "h2c" in ports:
        assert ns.grpc_port == ports["h2c"]
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == f"/v2/models/{ns.model_name}/ready"
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == ns.http_port
    return ns


def test_defaults_agree() -> None:
    defaults = CLI.parse([])
    assert DEFAULTS["model_name"] == defaults.model_name
    assert VALUES["model"]["name"] == "", "the chart serves the InferenceService name"
    assert (
        DEFAULTS["model_dir"]
        == defaults.model_dir
        == ENTRYPOINT[ENTRYPOINT.index("--model_dir") + 1]
    )
    assert defaults.http_port == VALUES["containerPorts"]["http"] == 8080
    assert defaults.grpc_port == VALUES["containerPorts"]["grpc"] == 8081
    assert defaults.img_size == VALUES["model"]["imgSize"]
    assert defaults.letterbox == VALUES["model"]["letterbox"]
    assert defaults.conf_threshold == VALUES["model"]["confThreshold"]
    assert defaults.iou_threshold == VALUES["model"]["iouThreshold"]
    assert defaults.max_det == VALUES["model"]["maxDet"]


@pytest.mark.usefixtures("helm")
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_chart_argv_is_accepted_by_the_predictor(case: Case) -> None:
    for isvc in _pods(tools.render(case.values_files, case.set_values)):
        ns = _check_argv(isvc)
        assert ns.device == ("cuda" if case.cloud else "cpu")


@pytest.mark.parametrize(
    "path", sorted(tools.MANIFESTS_DIR.rglob("inferenceservice*.yaml")),
    ids=lambda p: p.relative_to(tools.MANIFESTS_DIR).as_posix(),
)  # fmt: skip
def test_manifest_argv_is_accepted_by_the_predictor(path: Path) -> None:
    for isvc in _pods(tools.load_yaml_documents(path)):
        ns = _check_argv(isvc)
        assert ns.model_name == isvc["metadata"]["name"] == "yolov5"


@pytest.mark.usefixtures("helm")
def test_every_value_reaches_the_predictor() -> None:
    set_values = {
        "model.name": "traffic",
        "model.imgSize": 1280,
        "model.letterbox": "rect",
        "model.confThreshold": 0.4,
        "model.iouThreshold": 0.6,
        "model.maxDet": 300,
        "model.device": "cuda:1",
        "containerPorts.http": 9000,
        "containerPorts.grpc": 9001,
        "extraArgs[0]": "--enable_docs_url=true",
        "servingRuntime.enabled": False,
    }
    isvc = tools.one(tools.render(set_values=set_values), "InferenceService")
    ns = _check_argv(isvc)
    assert (ns.model_name, ns.img_size, ns.letterbox, ns.max_det, ns.device) == (
        "traffic", 1280, "rect", 300, "cuda:1",
    )  # fmt: skip
    assert (ns.conf_threshold, ns.iou_threshold) == (0.4, 0.6)
    assert (ns.http_port, ns.grpc_port) == (9000, 9001)
    assert ns.enable_docs_url is True


@pytest.mark.usefixtures("helm")
def test_backend_and_batching_values_reach_the_predictor() -> None:
    set_values = {
        "model.backend": "onnxruntime",
        "model.batching.maxBatchSize": 16,
        "model.batching.maxBatchDelayMs": 2.5,
    }
    (isvc,) = _pods(tools.render(set_values=set_values))
    ns = _check_argv(isvc)
    assert (ns.backend, ns.max_batch_size, ns.max_batch_delay_ms) == ("onnxruntime", 16, 2.5)


def test_every_flag_in_the_template_exists() -> None:
    flags = set(re.findall(r"^\s*- (--[a-z_]+)=", TEMPLATE, flags=re.M))
    assert {"--model_name", "--http_port", "--grpc_port", "--device", "--backend"} <= flags
    assert not flags - CLI.option_strings(), sorted(flags - CLI.option_strings())


@pytest.mark.parametrize(
    ("value_key", "flag"), [("letterbox", "--letterbox"), ("backend", "--backend")]
)
def test_schema_enums_are_the_parser_choices(value_key: str, flag: str) -> None:
    enum = set(VALUES_SCHEMA["properties"]["model"]["properties"][value_key]["enum"]) - {""}
    assert enum == set(CLI.choices(flag)), f"values.schema.json model.{value_key} vs {flag} choices"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_device_values_parse(device: str) -> None:
    pattern = VALUES_SCHEMA["properties"]["model"]["properties"]["device"]["pattern"]
    assert re.match(pattern, device)
    assert CLI.parse([f"--device={device}"]).device == device


@pytest.mark.usefixtures("helm")
def test_probes_answer_on_the_real_server(tmp_path: Path) -> None:
    """Start `python -m predictor` with the chart's argv and call what the probes call."""
    (isvc,) = _pods(tools.render())  # the runtime's container, {{.Name}} filled in
    container = checks.kserve_container(isvc)
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    save_detecting_checkpoint(tmp_path / "model.pt")
    # The pod's argv, with the model directory and ports moved for this machine.
    argv = ENTRYPOINT[3:] + container["args"]
    argv += [f"--model_dir={tmp_path}", f"--http_port={ports[0]}", f"--grpc_port={ports[1]}"]
    argv += ["--img_size=320"]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "predictor", *argv], stdout=out, stderr=out)
    try:

        def get(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}{path}", timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return 0

        probes = {
            p: container[p]["httpGet"]["path"]
            for p in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        deadline = time.monotonic() + 120
        while get(probes["startupProbe"]) != 200:
            assert proc.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        for probe, path in probes.items():
            assert get(path) == 200, f"{probe} {path}"
        assert get(f"/v2/models/not-{isvc['metadata']['name']}/ready") != 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("argv", [["--letterbox=diagonal"], ["--no_such_flag=1"], ["--img_size=x"]])
def test_the_child_parser_rejects_what_the_server_rejects(argv: list[str]) -> None:
    with pytest.raises(AssertionError):
        CLI.parse(argv)
