"""The model repository on disk: which models `--model_dir` holds, their versions and
per-model settings.

Layouts:

    model_dir/best.pt                        one model, served as --model_name
    model_dir/<name>/best.pt                 one model per subdirectory
    model_dir/<name>/<version>/best.pt       versions (numbers); the highest is the default

A `config.yaml` beside a checkpoint (or in `<name>/`, for all its versions) overrides that
model's settings: img_size, letterbox, conf_threshold, iou_threshold, max_det, names.

TorchServe model archives (`predictor.mar`) are models too: `--model_dir` may be one
archive (a `.mar`, `.tar.gz`/`.tgz`, or a no-archive directory holding MAR-INF/MANIFEST.json)
or a model store, a directory holding archives (beside model directories of the layouts
above). Each is served under its manifest's model name and version (DEFAULT_VERSION when it
has none); an explicit --model_name renames the model when `--model_dir` holds just one
(as a KServe runtime's `--model_name={{.Name}}` expects). Only the serialized file leaves
an archive, extracted into the cache directory when the model is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from kserve.model_repository import ModelRepository

from .. import mar
from ..backends import BackendError, resolve_cache_dir
from ..checkpoint import CHECKPOINT_SUFFIXES, CheckpointError
from ..cuda_diagnosis import DeviceError
from .errors import UnknownModel, UnservableModel
from .model import LoadedVersion, ModelVersion, YoloV5Model
from .observability import DESCRIPTIONS, forget_model
from .options import DEFAULT_MODEL_NAME, ServingOptions, with_config_file

logger = logging.getLogger(__name__)

# Why a model cannot be served: a refusal with its reason (exit 2 at start, 400 on a load).
MODEL_LOAD_ERRORS = (CheckpointError, BackendError, DeviceError)

DEFAULT_VERSION = "1"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    versions: list[ModelVersion]  # ascending; the last is the default
    # version -> the archive it comes from; such a version's `checkpoint` is the archive
    # until `YoloRepository.load_entry` extracts the serialized file
    archives: dict[str, mar.ModelArchive] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedEntry:
    """A loaded model's origin, for TorchServe's describe."""

    entry: ModelEntry
    loaded_at: float  # time.time()
    at_startup: bool


def discover(
    model_dir: str | Path,
    model_name: str | None,
    base: ServingOptions,
    read: Callable[[Path], mar.ModelArchive] = mar.read_archive,
) -> list[ModelEntry]:
    """Every model under `model_dir`. `model_name` (None: not given) names a single
    checkpoint (default DEFAULT_MODEL_NAME) or renames a single archive's model."""
    root = Path(model_dir)
    if mar.is_model_archive(root):
        archive = read(root)
        return [archive_entry(model_name or archive.name, [archive], base)]
    if root.is_file():
        name = model_name or DEFAULT_MODEL_NAME
        return [ModelEntry(name, [ModelVersion(DEFAULT_VERSION, root, base)])]
    if not root.is_dir():
        raise CheckpointError(f"--model_dir {root}: no such directory")
    store = store_entries(root, model_name, base, read)
    if _checkpoints(root):
        if store:
            raise CheckpointError(
                f"--model_dir {root} holds checkpoint files and model archives "
                f"({', '.join(sorted(store))}); move the checkpoints into a subdirectory "
                "per model"
            )
        options = with_config_file(root, base)
        name = model_name or DEFAULT_MODEL_NAME
        return [ModelEntry(name, [_version(root, DEFAULT_VERSION, options)])]
    entries = [*store.values(), *(model_entry(root, n, base) for n in _model_directories(root))]
    if not entries:
        raise CheckpointError(
            f"--model_dir {root}: found no checkpoint files and no model archives; put one "
            f"{'/'.join(CHECKPOINT_SUFFIXES)} file there, one subdirectory per model, or "
            f"TorchServe archives ({'/'.join(mar.ARCHIVE_SUFFIXES)})"
        )
    _refuse_twice_named(root, entries)
    return entries


def store_entries(
    root: Path,
    model_name: str | None,
    base: ServingOptions,
    read: Callable[[Path], mar.ModelArchive] = mar.read_archive,
) -> dict[str, ModelEntry]:
    """The models of the archives directly in `root`, by name; `model_name` renames the
    model when the directory serves nothing else."""
    store = mar.read_model_store(root, read)
    if model_name and len(store) == 1 and not _model_directories(root):
        [archives] = store.values()
        return {model_name: archive_entry(model_name, archives, base)}
    return {name: archive_entry(name, archives, base) for name, archives in store.items()}


def archive_entry(name: str, archives: list[mar.ModelArchive], base: ServingOptions) -> ModelEntry:
    """A model made of archives (one per version, ascending); archives use the command
    line's settings."""
    by_version: dict[str, mar.ModelArchive] = {}
    for archive in archives:
        version = archive.version or DEFAULT_VERSION
        if version in by_version:
            raise mar.ArchiveError(
                f"{by_version[version].path.name} and {archive.path.name} are both model "
                f"{name!r} version {version}"
            )
        by_version[version] = archive
    versions = [ModelVersion(v, archive.path, base) for v, archive in by_version.items()]
    return ModelEntry(name, versions, by_version)


def _refuse_twice_named(root: Path, entries: list[ModelEntry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise CheckpointError(
                f"--model_dir {root}: model {entry.name!r} is both a model directory and an "
                "archive's model name; rename one"
            )
        seen.add(entry.name)


def model_entry(root: Path, name: str, base: ServingOptions) -> ModelEntry:
    """The model `name` as the repository holds it now (read again on every load)."""
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        # only plain directory names inside the repository
        raise UnknownModel(f"model {name!r} is not in the repository")
    directory = root / name
    if not directory.is_dir() or mar.is_model_archive(directory):
        raise UnknownModel(f"model {name!r} is not in the repository")
    options = with_config_file(directory, base)
    if _checkpoints(directory):
        return ModelEntry(name, [_version(directory, DEFAULT_VERSION, options)])
    numbered = sorted(
        (int(child.name), child)
        for child in directory.iterdir()
        if child.is_dir() and child.name.isdigit()
    )
    if not numbered:
        raise CheckpointError(
            f"model {name!r}: {directory} holds no checkpoint and no numbered version directories"
        )
    return ModelEntry(
        name,
        [_version(path, str(n), with_config_file(path, options)) for n, path in numbered],
    )


def _model_directories(root: Path) -> list[str]:
    """The names of a repository's models in this server's layout: its subdirectories,
    hidden ones and no-archive TorchServe directories aside."""
    return sorted(
        child.name
        for child in root.iterdir()
        if child.is_dir() and not child.name.startswith(".") and not mar.is_model_archive(child)
    )


def _checkpoints(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)


def _version(directory: Path, version: str, options: ServingOptions) -> ModelVersion:
    found = _checkpoints(directory)
    if len(found) != 1:
        listing = f" ({', '.join(p.name for p in found)})" if found else ""
        raise CheckpointError(
            f"{directory}: found {len(found) or 'no'} checkpoint files{listing}; "
            f"put exactly one {'/'.join(CHECKPOINT_SUFFIXES)} file there"
        )
    return ModelVersion(version, found[0], options)


class YoloRepository(ModelRepository):
    """KServe's model registry, backed by `--model_dir`: the V2 repository extension's load
    reads a model from disk and warms it before it is registered; unload frees it."""

    def __init__(
        self,
        model_dir: str | Path,
        model_name: str | None,
        base: ServingOptions,
        max_loaded: int,
    ) -> None:
        super().__init__(str(model_dir))
        self.root = Path(model_dir)
        self.model_name = model_name  # None: not given on the command line
        self.base = base
        self.max_loaded = max_loaded
        self.loaded: dict[str, LoadedEntry] = {}
        self._lock = asyncio.Lock()
        self._archive_reads: dict[Path, tuple[tuple[int, int], mar.ModelArchive]] = {}
        self._extraction_dir: Path | None = None
        self._temporary: tempfile.TemporaryDirectory[str] | None = None

    def entries(self) -> list[ModelEntry]:
        return discover(self.root, self.model_name, self.base, self._read_archive)

    def entry(self, name: str) -> ModelEntry:
        if self._holds_one_model():
            [entry] = self.entries()
            if name != entry.name:
                raise UnknownModel(f"model {name!r} is not in the repository")
            return entry
        if name in _model_directories(self.root):  # found without reading the archives
            return model_entry(self.root, name, self.base)
        archived = store_entries(self.root, self.model_name, self.base, self._read_archive)
        if name in archived:
            return archived[name]
        raise UnknownModel(f"model {name!r} is not in the repository")

    def resolve(self, name: str, version: str | None = None) -> tuple[YoloV5Model, LoadedVersion]:
        """The model `name` and its `version` (None or "": the default), as every route and
        gRPC method that names a model finds them; UnknownModel (UnknownVersion) if either
        is not loaded."""
        model = self.get_model(name)
        if not isinstance(model, YoloV5Model):
            raise UnknownModel(f"model {name!r} is not loaded")
        return model, model.version(version)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The V2 repository index: each loaded version READY, each model that `load` would
        find on disk and is not loaded UNAVAILABLE (and an unreadable archive as a nameless
        UNAVAILABLE row with the reason)."""
        rows = []
        try:
            on_disk = self._names_on_disk()
        except CheckpointError as error:  # an unreadable archive is said, not fatal
            on_disk = [] if self._holds_one_model() else _model_directories(self.root)
            if not ready_only:
                reason = str(error)
                rows.append({"name": "", "version": "", "state": "UNAVAILABLE", "reason": reason})
        for name in sorted(set(on_disk) | set(self.models)):
            model = self.models.get(name)
            if isinstance(model, YoloV5Model) and model.ready:
                rows += [
                    {"name": name, "version": version, "state": "READY", "reason": ""}
                    for version in model.versions
                ]
            elif not ready_only:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": ""})
        return rows

    def _holds_one_model(self) -> bool:
        """A checkpoint, an archive, or a directory with a checkpoint of its own."""
        root = self.root
        return root.is_file() or mar.is_model_archive(root) or bool(_checkpoints(root))

    def _names_on_disk(self) -> list[str]:
        if not self.root.exists():
            return []
        if self._holds_one_model():
            return [entry.name for entry in self.entries()]
        archived = store_entries(self.root, self.model_name, self.base, self._read_archive)
        return [*archived, *_model_directories(self.root)]

    def _read_archive(self, path: Path) -> mar.ModelArchive:
        """`mar.read_archive`, remembered while the file keeps its size and time: listing
        the repository would otherwise decompress every tgz archive each time."""
        if path.is_dir():
            return mar.read_archive(path)
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        cached = self._archive_reads.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        archive = mar.read_archive(path)
        self._archive_reads[path] = (key, archive)
        return archive

    def _extract(self, archive: mar.ModelArchive) -> Path:
        if self._extraction_dir is None:
            cache = resolve_cache_dir(self.base.performance.cache_dir)
            if cache is None:  # --cache_dir "": a directory of our own, removed at exit
                self._temporary = tempfile.TemporaryDirectory(prefix="yolov5-kserve-archives-")
                cache = Path(self._temporary.name)
                logger.info(
                    "--cache_dir is empty: archives are extracted into %s, removed at exit",
                    cache,
                )
            self._extraction_dir = cache
        return mar.extract_checkpoint(archive, self._extraction_dir)

    def load_entry(self, entry: ModelEntry, at_startup: bool = True) -> YoloV5Model:
        """Build, load and warm a model, then register it (replacing an older one)."""
        if entry.name not in self.models and len(self.models) >= self.max_loaded:
            raise CheckpointError(
                f"cannot load {entry.name!r}: {len(self.models)} models are loaded, "
                f"--max_loaded_models={self.max_loaded}; unload one first"
            )
        checkpoints = {v: self._extract(archive) for v, archive in entry.archives.items()}
        model = YoloV5Model(
            entry.name,
            [
                dataclasses.replace(spec, checkpoint=checkpoints.get(spec.version, spec.checkpoint))
                for spec in entry.versions
            ],
        )
        try:
            model.load()
        except CheckpointError as error:
            for version, checkpoint in checkpoints.items():
                if str(error).startswith(f"{checkpoint}: "):
                    raise mar.archive_refusal(entry.archives[version], checkpoint, error) from None
            raise
        previous = self.models.get(entry.name)
        self.update(model)
        self.loaded[entry.name] = LoadedEntry(entry, time.time(), at_startup)
        if previous is not None:
            previous.stop()
            # the new versions' descriptions replace the old ones (equal labels included)
            forget_model(entry.name, DESCRIPTIONS)
            for version in model.versions.values():
                version.describe()
            _release_memory()
        return model

    async def load(self, name: str) -> bool:
        """The repository extension's load: UnknownModel, or UnservableModel with the reason
        (a bad checkpoint, archive or config.yaml, one model too many); the others keep
        serving."""
        async with self._lock:
            try:
                entry = await asyncio.to_thread(self.entry, name)
                await asyncio.to_thread(self.load_entry, entry, False)
            except MODEL_LOAD_ERRORS as error:
                raise UnservableModel(f"cannot load model {name!r}: {error}") from None
        return True

    def unload(self, name: str) -> None:
        if name not in self.models:
            raise UnknownModel(f"model {name!r} is not loaded")
        super().unload(name)
        self.loaded.pop(name, None)
        forget_model(name)
        _release_memory()
        logger.info("unloaded %s", name)


def _release_memory() -> None:
    """Hand freed model memory back to the system (and the GPU) right away."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
