"""The model repository on disk: which models `--model_dir` holds, their versions and
per-model settings.

Layouts:

    model_dir/best.pt                        one model, served as --model_name
    model_dir/<name>/best.pt                 one model per subdirectory
    model_dir/<name>/<version>/best.pt       versions (numbers); the highest is the default

A `config.yaml` beside a checkpoint (or in `<name>/`, for all its versions) overrides that
model's settings: img_size, letterbox, conf_threshold, iou_threshold, max_det, names.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from kserve.model_repository import ModelRepository

from ..backends import BackendError
from ..checkpoint import CHECKPOINT_SUFFIXES, CheckpointError
from .errors import UnknownModel, UnservableModel
from .model import LoadedVersion, ModelVersion, YoloV5Model
from .observability import DESCRIPTIONS, forget_model
from .options import ServingOptions, with_config_file

logger = logging.getLogger(__name__)

DEFAULT_VERSION = "1"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    versions: list[ModelVersion]  # ascending; the last is the default


def discover(model_dir: str | Path, default_name: str, base: ServingOptions) -> list[ModelEntry]:
    """Every model under `model_dir`; a single checkpoint is served as `default_name`."""
    root = Path(model_dir)
    if root.is_file():
        return [ModelEntry(default_name, [ModelVersion(DEFAULT_VERSION, root, base)])]
    if not root.is_dir():
        raise CheckpointError(f"--model_dir {root}: no such directory")
    if _holds_one_model(root):
        options = with_config_file(root, base)
        return [ModelEntry(default_name, [_version(root, DEFAULT_VERSION, options)])]
    entries = [model_entry(root, name, base) for name in _model_directories(root)]
    if not entries:
        raise CheckpointError(
            f"--model_dir {root}: found no checkpoint files; put one "
            f"{'/'.join(CHECKPOINT_SUFFIXES)} file there, or one subdirectory per model"
        )
    return entries


def model_entry(root: Path, name: str, base: ServingOptions) -> ModelEntry:
    """The model `name` as the repository holds it now (read again on every load)."""
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        # only plain directory names inside the repository
        raise UnknownModel(f"model {name!r} is not in the repository")
    directory = root / name
    if not directory.is_dir():
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
    """The names of a repository's models: its subdirectories, hidden ones aside."""
    return sorted(c.name for c in root.iterdir() if c.is_dir() and not c.name.startswith("."))


def _holds_one_model(root: Path) -> bool:
    """A checkpoint file, or a directory with a checkpoint of its own (not a repository)."""
    return root.is_file() or bool(_checkpoints(root))


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
        self, model_dir: str | Path, default_name: str, base: ServingOptions, max_loaded: int
    ) -> None:
        super().__init__(str(model_dir))
        self.root = Path(model_dir)
        self.default_name = default_name
        self.base = base
        self.max_loaded = max_loaded
        self._lock = asyncio.Lock()

    def entries(self) -> list[ModelEntry]:
        return discover(self.root, self.default_name, self.base)

    def entry(self, name: str) -> ModelEntry:
        if _holds_one_model(self.root):
            if name != self.default_name:
                raise UnknownModel(f"model {name!r} is not in the repository")
            return self.entries()[0]
        return model_entry(self.root, name, self.base)

    def resolve(self, name: str, version: str | None = None) -> tuple[YoloV5Model, LoadedVersion]:
        """The model `name` and its `version` (None or "": the default), as every route and
        gRPC method that names a model finds them; UnknownModel if either is not loaded."""
        model = self.get_model(name)
        if not isinstance(model, YoloV5Model):
            raise UnknownModel(f"model {name!r} is not loaded")
        return model, model.version(version)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The V2 repository index: each loaded version READY, each model that `load` would
        find on disk and is not loaded UNAVAILABLE."""
        rows = []
        for name in sorted(set(self._names_on_disk()) | set(self.models)):
            model = self.models.get(name)
            if isinstance(model, YoloV5Model) and model.ready:
                rows += [
                    {"name": name, "version": version, "state": "READY", "reason": ""}
                    for version in model.versions
                ]
            elif not ready_only:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": ""})
        return rows

    def _names_on_disk(self) -> list[str]:
        if not self.root.is_dir():
            return [self.default_name] if self.root.is_file() else []
        if _holds_one_model(self.root):
            return [self.default_name]
        return _model_directories(self.root)

    def load_entry(self, entry: ModelEntry) -> YoloV5Model:
        """Build, load and warm a model, then register it (replacing an older one)."""
        if entry.name not in self.models and len(self.models) >= self.max_loaded:
            raise CheckpointError(
                f"cannot load {entry.name!r}: {len(self.models)} models are loaded, "
                f"--max_loaded_models={self.max_loaded}; unload one first"
            )
        model = YoloV5Model(entry.name, entry.versions)
        model.load()
        previous = self.models.get(entry.name)
        self.update(model)
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
        (a bad checkpoint or config.yaml, one model too many); the others keep serving."""
        async with self._lock:
            try:
                entry = await asyncio.to_thread(self.entry, name)
                await asyncio.to_thread(self.load_entry, entry)
            except (CheckpointError, BackendError) as error:
                raise UnservableModel(f"cannot load model {name!r}: {error}") from None
        return True

    def unload(self, name: str) -> None:
        if name not in self.models:
            raise UnknownModel(f"model {name!r} is not loaded")
        super().unload(name)
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
