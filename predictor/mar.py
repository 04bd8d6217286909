"""TorchServe model archives (`.mar`) read as YOLOv5 models, without running any of their code.

torch-model-archiver writes three formats (pytorch/serve,
model-archiver/model_archiver/model_packaging_utils.py, `ModelExportUtils.archive`):

    default, zip-store   <name>.mar      a zip: the files at its root and MAR-INF/MANIFEST.json
    tgz                  <name>.tar.gz   a gzip'd tar: the same files under <name>/
    no-archive           <name>/         a directory: the files and MAR-INF/MANIFEST.json

and MANIFEST.json as (manifest_components/manifest.py and model.py there)

    {"createdOn": "...", "runtime": "python", "archiverVersion": "0.12.0",
     "model": {"modelName": "servemodel", "modelVersion": "1.0", "serializedFile": "yolov5x.pt",
               "handler": "custom_handler.py", "modelFile"?, "requirementsFile"?, ...}}

TorchServe strips the first path component of every tgz member
(frontend/archive/.../utils/ZipUtils.java, `decompressTarGzipFile`); we look for the manifest
at the root or one directory down, in both formats.

Only the serialized file is ever extracted, into a cache directory keyed by the archive's
SHA-256, and it is loaded with `predictor.checkpoint`'s safe loader. The handler and every
other file in the archive are never imported, run or written to disk. Archives are untrusted:
unsafe member names, links, and anything that would decompress beyond `ArchiveLimits` make
the whole archive refused, before anything is extracted.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import logging
import re
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

import torch

from .checkpoint import CheckpointError, LoadedModel, load_checkpoint

logger = logging.getLogger(__name__)

MANIFEST = "MAR-INF/MANIFEST.json"
ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz")
CACHE_SUBDIR = "torchserve"
ArchiveKind = Literal["zip", "tgz", "no-archive"]

# TorchServe's rule for model names (model_packaging_utils.py,
# `check_model_name_regex_or_exit`). Versions are held to it too: both end up in URL paths.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_LINK_MODE, _FILE_TYPE_MASK = 0o120000, 0o170000


class ArchiveError(CheckpointError):
    """A TorchServe model archive this server refuses to serve; the message says why."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What reading one archive may decompress, against zip bombs.

    The compression ratio is judged once a member (zip) or the stream (tgz) exceeds
    `ratio_floor_bytes`: small files and tar padding compress far better than weights do.
    """

    max_member_bytes: int = 4 << 30
    max_total_bytes: int = 8 << 30
    max_members: int = 10_000
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 8 << 20
    max_manifest_bytes: int = 1 << 20


@dataclass(frozen=True)
class Manifest:
    """What MAR-INF/MANIFEST.json says about the model."""

    model_name: str
    model_version: str | None
    serialized_file: str | None
    handler: str
    runtime: str
    ignored_files: tuple[str, ...] = ()  # modelFile, requirementsFile: never used


@dataclass(frozen=True)
class ModelArchive:
    """An archive whose manifest and member names passed every check (nothing extracted)."""

    path: Path
    kind: ArchiveKind
    manifest: Manifest
    member: str  # the serialized file's name inside the archive (or the directory)

    @property
    def name(self) -> str:
        return self.manifest.model_name

    @property
    def version(self) -> str | None:
        return self.manifest.model_version


def is_model_archive(path: str | Path) -> bool:
    """A `.mar` / `.tar.gz` / `.tgz` file, or a directory holding MAR-INF/MANIFEST.json."""
    path = Path(path)
    if path.is_dir():
        return (path / MANIFEST).is_file()
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def read_archive(path: str | Path, limits: ArchiveLimits = ArchiveLimits()) -> ModelArchive:
    """Check an archive and read its manifest, extracting nothing; raise `ArchiveError`."""
    path = Path(path)
    if path.is_dir():
        return _read_directory(path, limits)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such file or directory")
    kind = _kind(path)
    contents = _scan_zip(path, limits) if kind == "zip" else _scan_tgz(path, limits)
    root = _root(path, contents)
    manifest = _parse_manifest(path, contents.manifests[root + MANIFEST])
    member = root + _safe_name(path, _serialized_file(path, manifest))
    if member not in contents.files:
        raise ArchiveError(
            f"{path}: the serialized file {manifest.serialized_file!r} named by "
            f"{MANIFEST} is not in the archive"
        )
    return ModelArchive(path, kind, manifest, member)


def extract_checkpoint(
    archive: ModelArchive, cache_dir: str | Path, limits: ArchiveLimits = ArchiveLimits()
) -> Path:
    """The archive's serialized file on disk: extracted once into
    `cache_dir/torchserve/<archive sha256>/`; a no-archive directory's own file as it is."""
    _log_ignored_files(archive)
    if archive.kind == "no-archive":
        return archive.path / archive.member
    with archive.path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    target = Path(cache_dir) / CACHE_SUBDIR / digest[:40] / PurePosixPath(archive.member).name
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as temp:
            part = Path(temp.name)
            try:
                _extract_member(archive, temp, limits)
                temp.close()
                part.chmod(0o644)  # like any cache file (mkstemp makes it owner-only)
                part.replace(target)  # atomic: a concurrent loader never sees half a file
            except BaseException:
                part.unlink(missing_ok=True)
                raise
    except OSError as error:
        raise ArchiveError(f"{archive.path}: cannot extract into {cache_dir}: {error}") from None
    logger.info("%s: extracted %s to %s", archive.path, archive.member, target)
    return target


def load_archive(
    archive: ModelArchive,
    cache_dir: str | Path,
    device: torch.device | str = "cpu",
    limits: ArchiveLimits = ArchiveLimits(),
) -> LoadedModel:
    """The archive's YOLOv5 checkpoint, loaded by the safe loader; a serialized file that is
    not one is refused with the loader's reason, named after the archive."""
    checkpoint = extract_checkpoint(archive, cache_dir, limits)
    try:
        return load_checkpoint(checkpoint, device)
    except CheckpointError as error:
        raise archive_refusal(archive, checkpoint, error) from None


def archive_refusal(archive: ModelArchive, checkpoint: Path, error: Exception) -> ArchiveError:
    """The loader's refusal of the archive's extracted `checkpoint`, named after the archive."""
    reason = str(error).removeprefix(f"{checkpoint}: ")
    name = archive.manifest.serialized_file
    return ArchiveError(f"{archive.path}: serialized file {name}: {reason}")


def read_model_store(
    directory: str | Path, read: Callable[[Path], ModelArchive] = read_archive
) -> dict[str, list[ModelArchive]]:
    """The archives of a TorchServe model store by model name, each name's versions ascending
    (the last is the default), each read by `read`. Other entries are left alone; hidden
    ones are skipped."""
    directory = Path(directory)
    found: dict[str, list[ModelArchive]] = {}
    for path in sorted(directory.iterdir()):
        if not path.name.startswith(".") and is_model_archive(path):
            archive = read(path)
            found.setdefault(archive.name, []).append(archive)
    for name, archives in found.items():
        archives.sort(key=lambda archive: _version_key(archive.version))
        for older, newer in itertools.pairwise(archives):
            if older.version == newer.version:
                raise ArchiveError(
                    f"model store {directory}: {older.path.name} and {newer.path.name} are "
                    f"both model {name!r} version {older.version or '(none)'}"
                )
    return found


# ---------------------------------------------------------------------------------------
# Reading


@dataclass
class _Contents:
    files: dict[str, int] = field(default_factory=dict)  # member name -> uncompressed size
    manifests: dict[str, bytes] = field(default_factory=dict)  # candidate manifests' text


def _kind(path: Path) -> ArchiveKind:
    with path.open("rb") as file:
        if file.read(2) == _GZIP_MAGIC:
            return "tgz"
    if zipfile.is_zipfile(path):
        return "zip"
    raise ArchiveError(
        f"{path}: neither a zip (.mar) nor a gzip-compressed tar (tgz); "
        "not a TorchServe model archive"
    )


@contextlib.contextmanager
def _readable(path: Path, kind: str) -> Iterator[None]:
    """The archive libraries' errors on corrupt input, as a refusal."""
    try:
        yield
    except ArchiveError:
        raise
    except (
        OSError,  # gzip.BadGzipFile among them
        EOFError,
        zlib.error,
        zipfile.BadZipFile,  # a bad CRC among them
        tarfile.TarError,
        RuntimeError,  # an encrypted zip member
        NotImplementedError,  # an unsupported zip compression method
        ValueError,
    ) as error:
        raise ArchiveError(
            f"{path}: not a readable {kind} ({type(error).__name__}: {error})"
        ) from None


def _scan_zip(path: Path, limits: ArchiveLimits) -> _Contents:
    contents = _Contents()
    with _readable(path, "zip"), zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise ArchiveError(f"{path}: {len(infos)} members (limit {limits.max_members})")
        for info in infos:
            name = _safe_name(path, info.filename)
            if (info.external_attr >> 16) & _FILE_TYPE_MASK == _LINK_MODE:
                raise ArchiveError(f"{path}: member {info.filename!r} is a symbolic link")
            if info.is_dir():
                continue
            _admit(path, contents, name, info.file_size, limits)
            if info.file_size > limits.ratio_floor_bytes:
                _check_ratio(path, f"member {name!r}", info.file_size, info.compress_size, limits)
            if _is_manifest_candidate(name):
                contents.manifests[name] = _read_manifest(path, archive.open(info), limits)
    return contents


def _scan_tgz(path: Path, limits: ArchiveLimits) -> _Contents:
    contents = _Contents()
    with _readable(path, "gzip-compressed tar"), _tar_stream(path, limits) as tar:
        for count, info in enumerate(tar, start=1):
            if count > limits.max_members:
                raise ArchiveError(f"{path}: more than {limits.max_members} members")
            name = _safe_name(path, info.name)
            if info.isdir():
                continue
            if not info.isfile():
                raise ArchiveError(
                    f"{path}: member {info.name!r} is a {_tar_type(info)}; "
                    "a model archive holds plain files only"
                )
            _admit(path, contents, name, info.size, limits)
            if _is_manifest_candidate(name):
                contents.manifests[name] = _read_manifest(path, tar.extractfile(info), limits)
    return contents


class _InflationGuard:
    """A gzip stream's decompressed side that refuses to inflate beyond the limits."""

    def __init__(self, path: Path, compressed: IO[bytes], limits: ArchiveLimits) -> None:
        self._path, self._compressed, self._limits = path, compressed, limits
        self._inflated = gzip.GzipFile(fileobj=compressed, mode="rb")
        self._count = 0

    def read(self, size: int) -> bytes:
        data = self._inflated.read(size)
        self._count += len(data)
        limits = self._limits
        if self._count > limits.max_total_bytes:
            raise ArchiveError(
                f"{self._path}: decompresses to more than {limits.max_total_bytes} bytes "
                "(a zip bomb?)"
            )
        if self._count > limits.ratio_floor_bytes:
            _check_ratio(self._path, "the tar stream", self._count, self._compressed.tell(), limits)
        return data


@contextlib.contextmanager
def _tar_stream(path: Path, limits: ArchiveLimits) -> Iterator[tarfile.TarFile]:
    with path.open("rb") as compressed:
        guard = _InflationGuard(path, compressed, limits)
        # Stream mode ("r|"): one forward pass, nothing buffered beyond the current block.
        with tarfile.open(fileobj=guard, mode="r|") as tar:  # type: ignore[call-overload]
            yield tar


def _tar_type(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    return "device, FIFO or other special file"


def _safe_name(path: Path, name: str) -> str:
    """A member name as a relative POSIX path, refused if it could land outside a directory."""
    unsafe = (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or re.match(r"[A-Za-z]:", name) is not None
        or ".." in PurePosixPath(name).parts
    )
    if unsafe:
        raise ArchiveError(
            f"{path}: unsafe member name {name!r} (absolute, or leading outside the archive); "
            "refusing the whole archive"
        )
    return str(PurePosixPath(name))


def _admit(path: Path, contents: _Contents, name: str, size: int, limits: ArchiveLimits) -> None:
    if name in contents.files:
        raise ArchiveError(f"{path}: member {name!r} appears twice")
    if size > limits.max_member_bytes:
        raise ArchiveError(
            f"{path}: member {name!r} decompresses to {size} bytes "
            f"(limit {limits.max_member_bytes})"
        )
    contents.files[name] = size
    total = sum(contents.files.values())
    if total > limits.max_total_bytes:
        raise ArchiveError(
            f"{path}: members decompress to more than {limits.max_total_bytes} bytes (a zip bomb?)"
        )


def _check_ratio(
    path: Path, what: str, inflated: int, compressed: int, limits: ArchiveLimits
) -> None:
    if inflated > limits.max_ratio * max(compressed, 1):
        raise ArchiveError(
            f"{path}: {what} is compressed more than {limits.max_ratio:g}:1 "
            f"({inflated} bytes from {compressed}); a zip bomb, refused"
        )


def _is_manifest_candidate(name: str) -> bool:
    return name == MANIFEST or (
        name.endswith("/" + MANIFEST) and name.count("/") == MANIFEST.count("/") + 1
    )


def _read_manifest(path: Path, stream: IO[bytes] | None, limits: ArchiveLimits) -> bytes:
    assert stream is not None  # only regular files get here
    with stream:
        data = stream.read(limits.max_manifest_bytes + 1)
    if len(data) > limits.max_manifest_bytes:
        raise ArchiveError(f"{path}: {MANIFEST} is over {limits.max_manifest_bytes} bytes")
    return data


def _root(path: Path, contents: _Contents) -> str:
    """Where the archive's files are: "" (at the root) or "<dir>/" (one level down)."""
    if MANIFEST in contents.manifests:
        return ""
    if not contents.manifests:
        raise ArchiveError(
            f"{path}: no {MANIFEST}; not a TorchServe model archive "
            "(torch-model-archiver writes one into every archive)"
        )
    if len(contents.manifests) > 1:
        raise ArchiveError(f"{path}: several manifests ({sorted(contents.manifests)})")
    [name] = contents.manifests
    return name.removesuffix(MANIFEST)


def _read_directory(path: Path, limits: ArchiveLimits) -> ModelArchive:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArchiveError(f"{path}: no {MANIFEST}; not a TorchServe model directory")
    with manifest_path.open("rb") as stream:
        manifest = _parse_manifest(path, _read_manifest(path, stream, limits))
    member = _safe_name(path, _serialized_file(path, manifest))
    resolved = (path / member).resolve()
    if not resolved.is_relative_to(path.resolve()):
        raise ArchiveError(f"{path}: the serialized file {member!r} leads outside the directory")
    if not resolved.is_file():
        raise ArchiveError(
            f"{path}: the serialized file {member!r} named by {MANIFEST} is not in the directory"
        )
    return ModelArchive(path, "no-archive", manifest, member)


def _parse_manifest(path: Path, data: bytes) -> Manifest:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArchiveError(f"{path}: {MANIFEST} is not valid JSON ({error})") from None
    model = document.get("model") if isinstance(document, dict) else None
    if not isinstance(model, dict):
        raise ArchiveError(f'{path}: {MANIFEST} has no "model" object')
    name = _text(path, model, "modelName")
    if name is None or not _NAME.fullmatch(name):
        raise ArchiveError(
            f"{path}: {MANIFEST}: modelName {name!r} is not a valid TorchServe model name "
            f"({_NAME.pattern})"
        )
    version = _text(path, model, "modelVersion")
    if version is not None and not _NAME.fullmatch(version):
        raise ArchiveError(
            f"{path}: {MANIFEST}: modelVersion {version!r} must match {_NAME.pattern}"
        )
    ignored = tuple(
        f"{key} {value}"
        for key in ("modelFile", "requirementsFile")
        if (value := _text(path, model, key)) is not None
    )
    return Manifest(
        model_name=name,
        model_version=version,
        serialized_file=_text(path, model, "serializedFile"),
        handler=_text(path, model, "handler") or "(none)",
        runtime=_text(path, document, "runtime") or "python",
        ignored_files=ignored,
    )


def _text(path: Path, mapping: dict[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    if value is not None and not isinstance(value, str):
        raise ArchiveError(f"{path}: {MANIFEST}: {key} must be a string, got {value!r}")
    return value or None


def _serialized_file(path: Path, manifest: Manifest) -> str:
    if manifest.serialized_file is None:
        raise ArchiveError(
            f"{path}: handler-only archive (handler {manifest.handler}, no serializedFile): "
            "its model would be built by the handler's Python code, which this server never "
            "runs; archive the YOLOv5 checkpoint with --serialized-file"
        )
    return manifest.serialized_file


def _version_key(version: str | None) -> tuple[tuple[int, int | str], ...]:
    """Natural order: "1.10" after "1.9"; an archive without a version first."""
    if version is None:
        return ()
    parts = re.split(r"[._-]", version)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts)


# ---------------------------------------------------------------------------------------
# Extracting the serialized file


def _extract_member(archive: ModelArchive, target: IO[bytes], limits: ArchiveLimits) -> None:
    path = archive.path
    if archive.kind == "zip":
        with _readable(path, "zip"), zipfile.ZipFile(path) as zipped:
            _copy_bounded(archive, zipped.open(archive.member), target, limits)
        return
    with _readable(path, "gzip-compressed tar"), _tar_stream(path, limits) as tar:
        for info in tar:
            if info.isfile() and _safe_name(path, info.name) == archive.member:
                _copy_bounded(archive, tar.extractfile(info), target, limits)
                return
    raise ArchiveError(f"{path}: the serialized file {archive.member!r} is no longer in it")


def _copy_bounded(
    archive: ModelArchive, source: IO[bytes] | None, target: IO[bytes], limits: ArchiveLimits
) -> None:
    assert source is not None  # a regular file's stream
    copied = 0
    with source:
        while chunk := source.read(_CHUNK):
            copied += len(chunk)
            if copied > limits.max_member_bytes:
                raise ArchiveError(
                    f"{archive.path}: {archive.member} decompresses to more than "
                    f"{limits.max_member_bytes} bytes (a zip bomb?)"
                )
            try:
                target.write(chunk)
            except OSError as error:
                raise ArchiveError(
                    f"{archive.path}: cannot extract {archive.member}: {error}"
                ) from None


def _log_ignored_files(archive: ModelArchive) -> None:
    manifest = archive.manifest
    ignored = ", ".join((f"handler {manifest.handler}", *manifest.ignored_files))
    logger.warning(
        "%s: %s ignored (never imported or run); model %r serves %s with YOLOv5's own "
        "detection pipeline (letterbox, NMS and box scaling as in detect.py)",
        archive.path,
        ignored,
        archive.name,
        manifest.serialized_file,
    )
