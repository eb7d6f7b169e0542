"""Where the serving functions get their current model from (a port with small adapters)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from churnguard.bundle import ModelBundle
from churnguard.scorer import ModelLoadError

if TYPE_CHECKING:
    from churnguard.aws import ClientBudget
    from churnguard.settings import ServingSettings

log = logging.getLogger("churnguard.model")

# Told about model loads and refusals: (event name, details); the handlers turn them into metrics.
ModelEventSink = Callable[[str, dict[str, Any]], None]


class ModelUnavailableError(RuntimeError):
    """No model could be loaded at all (nothing to fall back to)."""


@dataclass(frozen=True)
class ModelStatus:
    state: str  # "ok": serving the pointed-to version; "degraded": serving another one (or none)
    serving: str | None
    wanted: str | None = None
    reason: str | None = None


class ModelProvider(Protocol):
    def current(self) -> ModelBundle: ...

    def status(self) -> ModelStatus: ...


class VersionedModelProvider(ModelProvider, Protocol):
    """A provider that can also load one given version (a dataset's run keeps the version it was
    planned with, whatever the pointer says later)."""

    def location(self, version: str) -> str | None:
        """Where ``version``'s files are (``s3://bucket/prefix/`` or a directory), when it is the
        version being served; None otherwise."""
        ...

    def load_version(self, version: str, location: str) -> ModelBundle:
        """That version, from ``location`` (``ModelUnavailableError`` when its files are not that
        version or cannot be read)."""
        ...


def provider_from_settings(
    settings: ServingSettings, on_event: ModelEventSink | None = None, budget: ClientBudget | None = None
) -> ModelProvider:
    """The model source the settings name: a local directory, or the SSM pointer to S3 (with the
    calling function's client budget, ``churnguard.aws``)."""
    if settings.model_dir:
        return DirectoryModelProvider(settings.model_dir, model_file=settings.model_file)
    from churnguard.aws import API
    from churnguard.model_store import S3PointerModelProvider

    return S3PointerModelProvider.from_settings(settings, on_event=on_event, budget=budget or API)


class DirectoryModelProvider:
    """A model directory on local disk, loaded once (tests, the local stack, container images)."""

    def __init__(self, directory: str | Path, *, model_file: str = "model.tflite") -> None:
        self._directory = Path(directory)
        self._model_file = model_file
        self._bundle: ModelBundle | None = None
        self._lock = threading.Lock()

    def current(self) -> ModelBundle:
        if self._bundle is None:
            with self._lock:
                if self._bundle is None:
                    try:
                        self._bundle = ModelBundle.from_directory(
                            self._directory, model_file=self._model_file
                        )
                    except (ModelLoadError, OSError) as exc:
                        raise ModelUnavailableError(f"model in {self._directory} refused: {exc}") from exc
                    log.info("model %s loaded from %s", self._bundle.version, self._directory)
        return self._bundle

    def status(self) -> ModelStatus:
        if self._bundle is None:
            return ModelStatus("degraded", None, reason="no model loaded yet")
        return ModelStatus("ok", self._bundle.version)

    def location(self, version: str) -> str | None:
        return str(self._directory) if self._bundle is not None and self._bundle.version == version else None

    def load_version(self, version: str, location: str) -> ModelBundle:
        if self._bundle is not None and self._bundle.version == version:
            return self._bundle
        try:
            bundle = ModelBundle.from_directory(Path(location), model_file=self._model_file)
        except (ModelLoadError, OSError) as exc:
            raise ModelUnavailableError(f"model {version} in {location} refused: {exc}") from exc
        if bundle.version != version:
            raise ModelUnavailableError(f"model in {location} is {bundle.version}, not {version}")
        return bundle
