"""docs/deploy.md: every object name in its commands is one the chart or manifests create.

Each `helm install yolov5 helm/yolov5-kserve ...` command of the document is rendered with
its own values files (plus the registry it sets with $REGISTRY); the names its section's
commands use (`inferenceservice/NAME`, `svc/NAME`, `isvc -n models NAME`, the ServiceAccount
that IRSA or Workload Identity is bound to, ...) must be what that install creates, or what
KServe derives from it (`<isvc>-predictor`). Sections that `kubectl apply` a manifest
directory are checked against that directory's objects; the others (calling the service,
canaries, upgrades) against the plain `helm install yolov5` the document assumes there.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from . import tools

pytestmark = pytest.mark.usefixtures("helm")

DOCS = (tools.REPO_ROOT / "docs" / "deploy.md").read_text()
HELM_INSTALL = re.compile(r"helm install yolov5 helm/yolov5-kserve(?P<args>(?:[^\n]*\\\n)*[^\n]*)")
MANIFEST_APPLY = re.compile(r"kubectl apply -n models -f manifests/(?P<dir>[\w/-]+)/")
# Names the commands use, by what they name.
ISVC_NAMES = [
    re.compile(r"inferenceservice/([a-z0-9-]+)"),
    re.compile(r"isvc -n models ([a-z0-9-]+)"),
    re.compile(r"/v2/models/([a-z0-9-]+)/"),
]
SERVICE_NAMES = [re.compile(r"svc/([a-z0-9-]+)"), re.compile(r"http://([a-z0-9-]+)\.models\.svc")]
SA_NAMES = [
    re.compile(r"--namespace models --name ([a-z0-9-]+)"),
    re.compile(r"svc\.id\.goog\[models/([a-z0-9-]+)\]"),
    re.compile(r"system:serviceaccount:models:([a-z0-9-]+)"),
    re.compile(r"serviceaccount -n models ([a-z0-9-]+)"),
    re.compile(r"ServiceAccount `([a-z0-9-]+)`"),
]


def _sections() -> list[str]:
    """`##` sections, split further at `###` headings (the Helm / kubectl variants)."""
    return [s for s in re.split(r"^(?=##+ )", DOCS, flags=re.M) if s.strip()]


def _found(patterns: list[re.Pattern[str]], text: str) -> set[str]:
    return {m for p in patterns for m in p.findall(text)}


def _names(objects: list[dict[str, Any]], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in tools.by_kind(objects, kind)}


def _helm_objects(args: str) -> list[dict[str, Any]]:
    files = re.findall(r"-f helm/yolov5-kserve/(\S+)", args)
    return tools.render(files)


def _manifest_objects(directory: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted((tools.MANIFESTS_DIR / directory).glob("*.yaml")):
        objects += tools.load_yaml_documents(path)
    return objects


def _check(section: str, objects: list[dict[str, Any]], where: str) -> None:
    isvcs = _names(objects, "InferenceService")
    assert isvcs, where
    services = {f"{n}-predictor" for n in isvcs}
    accounts = _names(objects, "ServiceAccount")
    for name in _found(ISVC_NAMES, section):
        assert name in isvcs, f"{where}: InferenceService {name!r}, the install creates {isvcs}"
    for name in _found(SERVICE_NAMES, section):
        assert name in services, f"{where}: Service {name!r}, KServe creates {services}"
    for name in _found(SA_NAMES, section):
        assert name in accounts, f"{where}: ServiceAccount {name!r}, the install creates {accounts}"


def test_helm_commands_name_what_the_chart_creates() -> None:
    checked = 0
    for section in _sections():
        installs = HELM_INSTALL.findall(section)
        if not installs or MANIFEST_APPLY.search(section):
            continue
        for args in installs:
            _check(section, _helm_objects(args), section.splitlines()[0])
            checked += 1
    assert checked >= 3, "the CPU, EKS and GKE installs"


def test_other_commands_name_what_the_default_release_creates() -> None:
    default = tools.render()
    checked = 0
    for section in _sections():
        if HELM_INSTALL.search(section) or MANIFEST_APPLY.search(section):
            continue
        if _found(ISVC_NAMES + SERVICE_NAMES + SA_NAMES, section):
            _check(section, default, section.splitlines()[0])
            checked += 1
    assert checked >= 2, "calling the service, canaries"


def test_kubectl_commands_name_what_the_manifests_create() -> None:
    checked = 0
    for section in _sections():
        for directory in set(MANIFEST_APPLY.findall(section)):
            _check(section, _manifest_objects(directory), section.splitlines()[0])
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("profile", ["values-eks.yaml", "values-gke.yaml"])
def test_identity_is_bound_to_the_service_account_every_path_creates(profile: str) -> None:
    """The cluster-side IRSA / Workload Identity commands serve both install paths."""
    cloud = profile.removeprefix("values-").removesuffix(".yaml")
    section = next(s for s in _sections() if s.startswith("### Cluster side") and (
        ("eksctl" in s) == (cloud == "eks")
    ))  # fmt: skip
    bound = _found(SA_NAMES, section)
    assert bound == {"yolov5"}, bound
    assert _names(tools.render([profile]), "ServiceAccount") == bound
    assert _names(_manifest_objects(cloud), "ServiceAccount") == bound


def test_profile_headers_agree_with_the_chart() -> None:
    """The install command in each profile's header comment names what it creates."""
    for profile in ("values-eks.yaml", "values-gke.yaml"):
        header = (tools.CHART_DIR / profile).read_text().split("\n\n", 1)[0]
        objects = tools.render([profile])
        assert "--set image.registry=" in header
        for kind, name in re.findall(
            r"the (ServiceAccount|InferenceService) `([a-z0-9-]+)`", header
        ):
            assert name in _names(objects, kind), (profile, kind, name)
        assert re.search(r"the ServiceAccount `yolov5`", header), profile
