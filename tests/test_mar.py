"""TorchServe model archives: real ones made by torch-model-archiver serve the checkpoint they
hold, hostile ones are refused with their reason, and nothing lands outside the cache."""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor.detector import DetectionSettings, Detector
from predictor.mar import (
    MANIFEST,
    ArchiveError,
    ArchiveLimits,
    extract_checkpoint,
    is_model_archive,
    load_archive,
    read_archive,
    read_model_store,
)
from tests.support import (
    ARCHIVE_SUFFIXES,
    loud_handler,
    make_archive,
    random_image,
    save_responsive_checkpoint,
)

FORMATS = ARCHIVE_SUFFIXES
SETTINGS = DetectionSettings(conf_threshold=0.25)
DEFAULT_LIMITS = ArchiveLimits()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "yolov5x.pt"
    save_responsive_checkpoint(path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """Created by the handler if anything ever imports it; must never exist."""
    path = tmp_path / "handler-was-imported"
    yield path
    assert not path.exists(), "the archive's handler was imported"


@pytest.fixture
def handler(tmp_path: Path, marker: Path) -> Path:
    return loud_handler(tmp_path / "src" / "custom_handler.py", marker)


@pytest.fixture
def archiver(tmp_path: Path, handler: Path) -> Callable[..., Path]:
    """Runs the real torch-model-archiver as the TorchServe YOLOv5 tutorial does."""

    def run(
        serialized: Path | None,
        archive_format: str = "default",
        name: str = "servemodel",
        version: str = "1.0",
        store: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> Path:
        store = store or tmp_path / "model_store"
        return make_archive(serialized, handler, store, archive_format, name, version, extra)

    return run


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


def assert_same_detections(original: Detector, served: Detector) -> None:
    images = [random_image(128, 160, seed=1), random_image(96, 128, seed=2)]
    expected, got = original.detect(images, SETTINGS), served.detect(images, SETTINGS)
    assert sum(len(result) for result in expected) > 0  # the comparison means something
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have.boxes, want.boxes)
        np.testing.assert_array_equal(have.scores, want.scores)
        np.testing.assert_array_equal(have.class_ids, want.class_ids)
        assert have.labels == want.labels


# --- archives as torch-model-archiver makes them -----------------------------------------


@pytest.mark.parametrize("archive_format", list(FORMATS))
def test_archive_serves_the_checkpoint_it_holds(
    tmp_path: Path, checkpoint: Path, archiver, archive_format: str, caplog
) -> None:
    path = archiver(checkpoint, archive_format)
    cache = tmp_path / "cache"
    before = files_under(tmp_path)
    assert is_model_archive(path)

    archive = read_archive(path)
    assert (archive.name, archive.version) == ("servemodel", "1.0")
    assert archive.manifest.serialized_file == "yolov5x.pt"
    assert archive.manifest.handler == "custom_handler.py"
    with caplog.at_level(logging.WARNING, logger="predictor.mar"):
        model = load_archive(archive, cache)

    assert_same_detections(
        Detector.load(checkpoint, device="cpu", img_size=128),
        Detector(model, img_size=128),
    )
    assert "handler custom_handler.py ignored (never imported or run)" in caplog.text
    assert "YOLOv5's own detection pipeline" in caplog.text
    written = files_under(tmp_path) - before
    if archive_format == "no-archive":
        assert written == set()  # the directory's file is loaded where it is
    else:
        [extracted] = written  # the serialized file and nothing else, inside the cache
        assert extracted.is_relative_to(cache / "torchserve")
        assert extracted.name == "yolov5x.pt"
        assert extracted.read_bytes() == checkpoint.read_bytes()


def test_extraction_is_keyed_by_archive_content(tmp_path: Path, checkpoint: Path, archiver) -> None:
    first = read_archive(archiver(checkpoint, version="1.0"))
    cache = tmp_path / "cache"
    extracted = extract_checkpoint(first, cache)
    mtime = extracted.stat().st_mtime_ns
    assert extract_checkpoint(first, cache) == extracted
    assert extracted.stat().st_mtime_ns == mtime  # a cache hit, not a second extraction

    second = read_archive(archiver(checkpoint, name="other", version="2.0"))
    assert extract_checkpoint(second, cache).parent != extracted.parent


def test_model_store_lists_archives_by_name_and_version(
    tmp_path: Path, checkpoint: Path, archiver
) -> None:
    store = tmp_path / "model_store"
    archiver(checkpoint, "default", version="1.10")
    archiver(checkpoint, "tgz", version="1.9")
    archiver(checkpoint, "no-archive", name="shapes", version="3")
    (store / "ours").mkdir()  # this server's own layout beside them: not an archive
    (store / "ours" / "best.pt").write_bytes(checkpoint.read_bytes())
    (store / "README.md").write_text("notes")

    found = read_model_store(store)

    assert {name: [a.version for a in archives] for name, archives in found.items()} == {
        "servemodel": ["1.9", "1.10"],  # natural order: the last is the default
        "shapes": ["3"],
    }
    assert [a.kind for a in found["servemodel"]] == ["tgz", "zip"]


def test_model_store_refuses_two_archives_of_one_version(
    tmp_path: Path, checkpoint: Path, archiver
) -> None:
    archiver(checkpoint, "default")
    archiver(checkpoint, "tgz")
    with pytest.raises(ArchiveError, match=r"servemodel.mar and servemodel.tar.gz are both"):
        read_model_store(tmp_path / "model_store")


def test_handler_only_archive_is_refused(archiver) -> None:
    path = archiver(None)
    with pytest.raises(ArchiveError, match=r"handler-only archive \(handler custom_handler.py"):
        read_archive(path)


def test_state_dict_archive_is_refused_as_not_yolov5(tmp_path: Path, archiver, caplog) -> None:
    """TorchServe's eager mode: model class in --model-file, weights as a state_dict."""
    weights = tmp_path / "src" / "yolov5x.pt"
    torch.save({"conv.weight": torch.zeros(2, 3, 1, 1)}, weights)
    model_file = tmp_path / "src" / "model.py"
    model_file.write_text("raise RuntimeError('never import me')\n")
    archive = read_archive(archiver(weights, extra=("--model-file", str(model_file))))

    with (
        caplog.at_level(logging.WARNING, logger="predictor.mar"),
        pytest.raises(ArchiveError) as refusal,
    ):
        load_archive(archive, tmp_path / "cache")
    assert str(refusal.value).startswith(f"{archive.path}: serialized file yolov5x.pt: ")
    assert "no 'model' or 'ema' entry" in str(refusal.value)
    assert "modelFile model.py" in caplog.text


class ShellPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_malicious_serialized_file_is_refused_unrun(tmp_path: Path, archiver) -> None:
    pwned = tmp_path / "pwned"
    weights = tmp_path / "src" / "yolov5x.pt"
    weights.parent.mkdir(exist_ok=True)
    torch.save({"model": ShellPayload(pwned)}, weights)
    archive = read_archive(archiver(weights))
    with pytest.raises(ArchiveError, match=r"serialized file yolov5x.pt: refused to load"):
        load_archive(archive, tmp_path / "cache")
    assert not pwned.exists()


# --- hand-made hostile archives ----------------------------------------------------------


def manifest(serialized: str | None = "yolov5x.pt", name: str = "servemodel") -> bytes:
    model = {"modelName": name, "modelVersion": "1.0", "handler": "custom_handler.py"}
    if serialized is not None:
        model["serializedFile"] = serialized
    return json.dumps({"runtime": "python", "model": model}).encode()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_tgz(
    path: Path,
    members: dict[str, bytes],
    links: dict[str, str] | None = None,
    zeros: dict[str, int] | None = None,
) -> Path:
    """A tgz of `members`, symbolic `links` (name: target) and `zeros` (name: size)."""
    with tarfile.open(path, "w:gz") as archive, open("/dev/zero", "rb") as zero:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, size in (zeros or {}).items():
            info = tarfile.TarInfo(name)
            info.size = size
            archive.addfile(info, zero)
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return path


@pytest.fixture
def weights(checkpoint: Path) -> bytes:
    return checkpoint.read_bytes()


@pytest.fixture
def refuses(tmp_path: Path) -> Callable[..., ArchiveError]:
    """Reads and extracts an archive, expecting a refusal and no file written anywhere."""

    def check(path: Path, reason: str, limits: ArchiveLimits = DEFAULT_LIMITS) -> ArchiveError:
        before = files_under(tmp_path)
        with pytest.raises(ArchiveError, match=reason) as refusal:
            extract_checkpoint(read_archive(path, limits), tmp_path / "cache", limits)
        assert files_under(tmp_path) == before
        assert str(refusal.value).startswith(str(path))  # names the archive
        return refusal.value

    return check


@pytest.mark.parametrize(
    "evil",
    ["../evil.pt", "/tmp/evil.pt", "weights/../../evil.pt", "..\\evil.pt", "C:/evil.pt"],
)
def test_traversal_member_names_are_refused(tmp_path: Path, weights, refuses, evil) -> None:
    members = {MANIFEST: manifest(), "yolov5x.pt": weights, evil: b"x"}
    refuses(write_zip(tmp_path / "evil.mar", members), r"unsafe member name")
    tgz = {"servemodel/" + MANIFEST: manifest(), "servemodel/yolov5x.pt": weights, evil: b"x"}
    refuses(write_tgz(tmp_path / "evil.tar.gz", tgz), r"unsafe member name")
    assert not (tmp_path / "evil.pt").exists()


def test_traversal_in_the_manifest_is_refused(tmp_path: Path, weights, refuses) -> None:
    members = {MANIFEST: manifest("../outside.pt"), "yolov5x.pt": weights}
    refuses(write_zip(tmp_path / "evil.mar", members), r"unsafe member name '../outside.pt'")

    directory = tmp_path / "servemodel"
    (directory / "MAR-INF").mkdir(parents=True)
    (directory / MANIFEST).write_bytes(manifest("yolov5x.pt"))
    (tmp_path / "outside.pt").write_bytes(weights)
    (directory / "yolov5x.pt").symlink_to(tmp_path / "outside.pt")
    refuses(directory, r"'yolov5x.pt' leads outside the directory")


def test_links_are_refused(tmp_path: Path, weights, refuses) -> None:
    members = {"servemodel/" + MANIFEST: manifest(), "servemodel/yolov5x.pt": weights}
    path = write_tgz(tmp_path / "link.tar.gz", members, {"servemodel/h.py": "/etc/passwd"})
    refuses(path, r"member 'servemodel/h.py' is a symbolic link")

    path = write_zip(tmp_path / "link.mar", {MANIFEST: manifest(), "yolov5x.pt": weights})
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo("h.py")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd")
    refuses(path, r"member 'h.py' is a symbolic link")


def test_zip_bombs_are_refused(tmp_path: Path, weights, refuses) -> None:
    zeros = bytes(64 << 20)  # deflates about 1000:1
    members = {MANIFEST: manifest(), "yolov5x.pt": weights}
    refuses(write_zip(tmp_path / "ratio.mar", {**members, "z": zeros}), r"more than 100:1")
    tgz_members = {f"m/{name}": data for name, data in members.items()}
    # The stream's ratio counts the (incompressible) weights too: the bomb must outweigh them.
    path = write_tgz(tmp_path / "ratio.tar.gz", tgz_members, zeros={"m/z": 256 << 20})
    refuses(path, r"the tar stream is compressed more than 100:1")

    small = write_zip(tmp_path / "small.mar", members)
    limits = ArchiveLimits(max_member_bytes=len(weights) - 1)
    refuses(small, r"member 'yolov5x.pt' decompresses to \d+ bytes \(limit", limits)
    limits = ArchiveLimits(max_total_bytes=len(weights))
    refuses(small, r"members decompress to more than", limits)
    refuses(small, r"2 members \(limit 1\)", ArchiveLimits(max_members=1))
    tgz = write_tgz(tmp_path / "small.tar.gz", tgz_members)
    refuses(tgz, r"decompress(es)? to more than", ArchiveLimits(max_total_bytes=len(weights)))


def test_archive_without_manifest_is_refused(tmp_path: Path, checkpoint: Path, refuses) -> None:
    refuses(
        write_zip(tmp_path / "bare.mar", {"yolov5x.pt": checkpoint.read_bytes()}),
        rf"no {MANIFEST}; not a TorchServe model archive",
    )
    renamed = tmp_path / "renamed.mar"  # a .pt is itself a zip
    renamed.write_bytes(checkpoint.read_bytes())
    refuses(renamed, rf"no {MANIFEST}")
    (tmp_path / "text.mar").write_text("hello")
    refuses(tmp_path / "text.mar", r"neither a zip \(.mar\) nor a gzip-compressed tar")


def test_missing_serialized_file_is_refused(tmp_path: Path, refuses) -> None:
    path = write_zip(tmp_path / "missing.mar", {MANIFEST: manifest("yolov5x.pt")})
    refuses(path, r"serialized file 'yolov5x.pt' named by MAR-INF/MANIFEST.json is not in")


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"{not json", r"is not valid JSON"),
        (b'{"runtime": "python"}', r'has no "model" object'),
        (manifest(name="../etc"), r"modelName '../etc' is not a valid TorchServe model name"),
    ],
)
def test_bad_manifests_are_refused(tmp_path: Path, weights, refuses, document, reason) -> None:
    refuses(write_zip(tmp_path / "bad.mar", {MANIFEST: document, "yolov5x.pt": weights}), reason)


def test_corrupt_archives_are_refused(tmp_path: Path, checkpoint: Path, archiver, refuses) -> None:
    good = archiver(checkpoint, "tgz").read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good[: len(good) // 2])
    refuses(truncated, r"not a readable gzip-compressed tar")


def test_unwritable_cache_is_a_clear_refusal(tmp_path: Path, checkpoint: Path, archiver) -> None:
    archive = read_archive(archiver(checkpoint))
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(ArchiveError, match=r"cannot extract into"):
        extract_checkpoint(archive, blocker)


@pytest.mark.parametrize("archive_format", ["default", "tgz"])
def test_a_refused_extraction_leaves_no_partial_file(
    tmp_path: Path, checkpoint: Path, archiver, archive_format: str
) -> None:
    """The copy itself is bounded too (an archive may change between reading and extracting)."""
    archive = read_archive(archiver(checkpoint, archive_format))
    cache = tmp_path / "cache"
    with pytest.raises(ArchiveError, match=r"yolov5x.pt decompresses to more than 1000 bytes"):
        extract_checkpoint(archive, cache, ArchiveLimits(max_member_bytes=1000))
    assert files_under(cache) == set()
