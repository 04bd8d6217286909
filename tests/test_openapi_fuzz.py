"""Schemathesis against the server's own OpenAPI document: generated requests for every
inference and metadata route never get a 5xx, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serving import Server, running_server
from tests.support import save_responsive_checkpoint

# Repository load/unload change what is served (an unload of the fuzzed model would end
# the run; tests/test_repository.py covers them), and :explain is not offered (501);
# everything else, the repository index included, must never fail with 5xx.
EXCLUDED = r"/repository/models/|/metrics|:explain"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    model_dir = tmp_path_factory.mktemp("openapi") / "model"
    save_responsive_checkpoint(model_dir / "model.pt", nc=2, names=["a", "b"])
    with running_server(model_dir, "--img_size", "96") as server:
        yield server


def test_generated_requests_never_get_5xx(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.http_url}/openapi.json")
    operations = [
        result.ok() for result in schema.exclude(path_regex=EXCLUDED).get_all_operations()
    ]
    assert len(operations) >= 10, "the inference and metadata routes are all documented"
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.text[:200]}")

        fuzz()
    assert not failures, "\n".join(failures)


def test_still_serving_after_the_fuzzing(server: Server, tmp_path: Path) -> None:
    assert httpx.get(f"{server.http_url}/v2/models/yolov5/ready").status_code == 200
