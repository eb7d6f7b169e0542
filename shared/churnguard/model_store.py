"""Models in S3, located by an SSM pointer; loaded, verified, cached in /tmp and hot-swapped.

Pointer (an SSM String parameter, JSON): ``{"version": "...", "s3_uri": "s3://bucket/prefix/"}``;
the prefix holds the model directory (metadata.json, feature_spec.json, model.tflite, ...). Objects
and parameters are reached through the ports (``churnguard.ports``); ``publish_model`` and the CLI
take boto3 clients and wrap them in the adapters.

* The pointer is read with Powertools Parameters and a max age, so a warm container notices a new
  version within ``max_age`` seconds and moves to it on the next request — no cold start.
* A version whose files are corrupt, whose hashes do not match metadata.json, or whose feature spec
  or metadata does not fit is refused: the previous model keeps serving, the refusal is logged and
  reported through ``on_event`` (the handlers turn it into a metric), and the same version is not
  downloaded again until the pointer changes.
* A version whose files cannot be fetched (any S3 error: not uploaded yet, access denied, no such
  bucket, S3 unreachable) is not refused for good: the previous model keeps serving, and the fetch is
  tried again after ``max_age`` seconds. Either way ``status()`` says "degraded" with the reason
  until the pointed-to version serves.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from churnguard import aws
from churnguard.bundle import REQUIRED_FILES, ModelBundle, files_to_load
from churnguard.model_metadata import (
    DRIFT_REFERENCE,
    DYNAMIC_RANGE_MODEL,
    REASONS_MODEL,
    ModelMetadata,
    ModelMetadataError,
)
from churnguard.model_provider import ModelEventSink, ModelStatus, ModelUnavailableError
from churnguard.ports import ObjectStore, ParameterStore
from churnguard.scorer import ModelLoadError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient

    from churnguard.settings import ServingSettings

log = logging.getLogger("churnguard.model")

MODEL_FILES = (*REQUIRED_FILES, DYNAMIC_RANGE_MODEL, REASONS_MODEL, DRIFT_REFERENCE)


class ModelFetchError(ModelLoadError):
    """The model's files could not be read from S3 (possibly transient): retried later, not refused."""


@dataclass(frozen=True)
class ModelPointer:
    version: str
    s3_uri: str

    @classmethod
    def parse(cls, value: object) -> ModelPointer:
        """From the parameter's JSON text (or what Powertools already decoded)."""
        data: Any = json.loads(value) if isinstance(value, str | bytes) else value
        try:
            pointer = cls(version=str(data["version"]), s3_uri=str(data["s3_uri"]))
        except (KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"model pointer must be JSON with version and s3_uri, got {value!r}"
            ) from exc
        if urlparse(pointer.s3_uri).scheme != "s3":
            raise ModelLoadError(f"model pointer s3_uri must be s3://bucket/prefix/, got {pointer.s3_uri!r}")
        return pointer

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "s3_uri": self.s3_uri})

    @property
    def bucket(self) -> str:
        return urlparse(self.s3_uri).netloc

    @property
    def prefix(self) -> str:
        path = urlparse(self.s3_uri).path.lstrip("/")
        return path if not path or path.endswith("/") else path + "/"


def download_model_files(store: ObjectStore, pointer: ModelPointer, model_file: str) -> dict[str, bytes]:
    """metadata.json and what it says a bundle serving ``model_file`` reads (the feature spec, the
    model, the reasons model); any AWS error becomes ``ModelFetchError`` (retried later, not refused).
    Unreadable metadata downloads only itself: ``ModelBundle.from_files`` then says what is wrong."""
    files = {"metadata.json": _download(store, pointer, "metadata.json")}
    try:
        names = files_to_load(ModelMetadata.from_json(files["metadata.json"]), model_file)
    except ModelMetadataError:
        return files
    for name in names:
        files[name] = _download(store, pointer, name)
    return files


def _download(store: ObjectStore, pointer: ModelPointer, name: str) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return store.get_bytes(pointer.bucket, pointer.prefix + name)
    except ClientError as exc:  # NoSuchKey, NoSuchBucket, AccessDenied (a missing key without ListBucket)
        code = exc.response.get("Error", {}).get("Code", "error")
        raise ModelFetchError(f"{pointer.s3_uri}{name} could not be read: {code}") from exc
    except BotoCoreError as exc:  # endpoint unreachable, timeouts, a body cut short
        raise ModelFetchError(f"{pointer.s3_uri}{name} could not be read: {type(exc).__name__}") from exc


class S3PointerModelProvider:
    """The model the pointer names, from the object store; ``get_parameter(name, max_age_s)`` reads
    the pointer (cached for ``max_age_s``: Powertools Parameters in the functions)."""

    def __init__(
        self,
        *,
        parameter_name: str,
        store: ObjectStore,
        get_parameter: Callable[[str, int], object],
        max_age_s: int = 60,
        cache_dir: str | Path = "/tmp/churnguard-models",
        model_file: str = "model.tflite",
        on_event: ModelEventSink = lambda name, details: None,
    ) -> None:
        self._parameter_name = parameter_name
        self._store = store
        self._get_parameter = get_parameter
        self._max_age_s = max_age_s
        self._cache_dir = Path(cache_dir)
        self._model_file = model_file
        self._on_event = on_event
        self._bundle: ModelBundle | None = None
        self._refused_version: str | None = None
        self._retry_at: dict[str, float] = {}  # version whose fetch failed -> when to try again
        self._status = ModelStatus("degraded", None, reason="no model loaded yet")
        self._lock = threading.Lock()
        self._serving_uri: str | None = None  # the s3_uri of the serving bundle's pointer
        self._pinned: dict[str, ModelBundle] = {}  # versions loaded by load_version (one run's model)

    @classmethod
    def from_settings(
        cls,
        settings: ServingSettings,
        on_event: ModelEventSink | None = None,
        budget: aws.ClientBudget = aws.API,
    ) -> S3PointerModelProvider:
        from aws_lambda_powertools.utilities.parameters import SSMProvider

        from churnguard.adapters import S3ObjectStore

        if settings.model_pointer_parameter is None:
            raise ModelUnavailableError("no model pointer parameter is configured")
        ssm = SSMProvider(boto_config=budget.config())

        def get_parameter(name: str, max_age: int) -> object:
            return ssm.get(name, max_age=max_age)

        return cls(
            parameter_name=settings.model_pointer_parameter,
            store=S3ObjectStore(aws.client("s3", budget)),
            get_parameter=get_parameter,
            max_age_s=settings.model_pointer_max_age_s,
            cache_dir=settings.model_cache_dir,
            model_file=settings.model_file,
            on_event=on_event or (lambda name, details: None),
        )

    def _files_for(self, pointer: ModelPointer) -> dict[str, bytes]:
        cached = self._cache_dir / pointer.version
        try:
            names = ("metadata.json", *files_to_load(ModelMetadata.from_directory(cached), self._model_file))
        except (OSError, ModelMetadataError):
            names = ()  # nothing (usable) cached: download
        if names and all((cached / n).exists() for n in names):
            return {n: (cached / n).read_bytes() for n in names}
        files = download_model_files(self._store, pointer, self._model_file)
        cached.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            tmp = cached / f".{name}.part"
            tmp.write_bytes(content)
            tmp.replace(cached / name)
        return files

    def location(self, version: str) -> str | None:
        """The S3 prefix of ``version`` when it is the serving one (a dataset's plan records it)."""
        bundle = self._bundle
        return self._serving_uri if bundle is not None and bundle.version == version else None

    def load_version(self, version: str, location: str) -> ModelBundle:
        """That version from its S3 prefix (cached like the pointed-to one), without changing what
        ``current`` serves: a dataset's run keeps its planned model when the pointer moves."""
        bundle = self._bundle
        if bundle is not None and bundle.version == version:
            return bundle
        with self._lock:
            if version not in self._pinned:
                pointer = ModelPointer(version=version, s3_uri=location)
                try:
                    loaded = ModelBundle.from_files(self._files_for(pointer), model_file=self._model_file)
                except ModelFetchError:
                    raise  # maybe transient: the step is retried
                except (ModelLoadError, OSError) as exc:
                    raise ModelUnavailableError(f"model {version} at {location} refused: {exc}") from exc
                if loaded.version != version:
                    shutil.rmtree(self._cache_dir / version, ignore_errors=True)  # not that version's files
                    raise ModelUnavailableError(
                        f"model files at {location} are {loaded.version}, not {version}"
                    )
                self._pinned = {version: loaded}  # one pinned version at a time: bounded memory
            return self._pinned[version]

    def status(self) -> ModelStatus:
        """Whether the pointed-to version is the one serving (for /v1/health), as of the last request."""
        return self._status

    def _settled(self, version: str) -> ModelBundle | None:
        """The serving bundle when there is nothing to do for this pointer version (serving it,
        refused it, or waiting to retry it); None when it should be loaded."""
        bundle = self._bundle
        if bundle is not None and (
            version in (bundle.version, self._refused_version)
            or time.monotonic() < self._retry_at.get(version, 0.0)
        ):
            return bundle
        return None

    def current(self) -> ModelBundle:
        try:
            pointer = ModelPointer.parse(self._get_parameter(self._parameter_name, self._max_age_s))
        except Exception as exc:  # SSM unreachable or pointer malformed: keep serving what we have
            reason = f"model pointer unreadable: {type(exc).__name__}"
            if self._bundle is not None:
                log.warning("model pointer unreadable, keeping %s: %s", self._bundle.version, exc)
                self._status = ModelStatus("degraded", self._bundle.version, None, reason)
                return self._bundle
            self._status = ModelStatus("degraded", None, None, reason)
            raise ModelUnavailableError(f"model pointer {self._parameter_name} unreadable: {exc}") from exc
        settled = self._settled(pointer.version)
        if settled is not None:
            return settled
        with self._lock:
            settled = self._settled(pointer.version)
            return settled if settled is not None else self._load(pointer)

    def _load(self, pointer: ModelPointer) -> ModelBundle:
        previous = self._bundle.version if self._bundle else None
        try:
            bundle = ModelBundle.from_files(self._files_for(pointer), model_file=self._model_file)
            if bundle.version != pointer.version:
                raise ModelLoadError(
                    f"pointer says version {pointer.version} but the model files are {bundle.version}"
                )
        except (ModelLoadError, OSError) as exc:
            if isinstance(exc, ModelFetchError):  # maybe transient or not uploaded yet: retry later
                self._retry_at[pointer.version] = time.monotonic() + self._max_age_s
            else:
                self._refused_version = pointer.version
            log.error("model %s refused (%s); serving %s", pointer.version, exc, previous)
            self._on_event(
                "ModelRefused", {"version": pointer.version, "reason": str(exc), "serving": previous}
            )
            self._status = ModelStatus(
                "degraded", previous, pointer.version, f"model {pointer.version}: {exc}"
            )
            if self._bundle is None:
                raise ModelUnavailableError(f"model {pointer.version} refused: {exc}") from exc
            return self._bundle
        self._bundle, self._refused_version = bundle, None
        self._serving_uri = pointer.s3_uri
        self._retry_at.pop(pointer.version, None)
        self._status = ModelStatus("ok", bundle.version)
        log.info("model %s loaded from %s (previous: %s)", bundle.version, pointer.s3_uri, previous)
        self._on_event("ModelLoaded", {"version": bundle.version, "previous": previous})
        return bundle


def publish(
    model_dir: str | Path,
    *,
    store: ObjectStore,
    parameters: ParameterStore,
    bucket: str,
    parameter_name: str,
    prefix: str = "models/",
) -> ModelPointer:
    """Upload a model directory to ``s3://bucket/prefix/<version>/`` and move the pointer to it.

    The previous pointer value is kept as an SSM parameter version, so rollback is
    ``aws ssm label-parameter-version`` / ``put-parameter`` with the old value (see README).
    """
    model_dir = Path(model_dir)
    version = ModelMetadata.from_directory(model_dir).model_version
    key_prefix = f"{prefix.rstrip('/')}/{version}/"
    names = [n for n in MODEL_FILES if (model_dir / n).exists()]
    for name in sorted(names, key=lambda n: n == "metadata.json"):  # metadata last: marks it complete
        store.put_bytes(bucket, key_prefix + name, (model_dir / name).read_bytes())
    pointer = ModelPointer(version=version, s3_uri=f"s3://{bucket}/{key_prefix}")
    parameters.put(parameter_name, pointer.to_json())
    return pointer


def publish_model(
    model_dir: str | Path,
    *,
    s3_client: S3Client,
    ssm_client: SSMClient,
    bucket: str,
    parameter_name: str,
    prefix: str = "models/",
) -> ModelPointer:
    """``publish`` with boto3 clients (deploy tooling, the local stacks, the CLI)."""
    from churnguard.adapters import S3ObjectStore, SsmParameterStore

    return publish(
        model_dir,
        store=S3ObjectStore(s3_client),
        parameters=SsmParameterStore(ssm_client),
        bucket=bucket,
        parameter_name=parameter_name,
        prefix=prefix,
    )


def rollback_model(parameters: ParameterStore, parameter_name: str) -> ModelPointer:
    """Point back at the model that was current before this one (the previous distinct version).

    SSM keeps every value of the pointer; the newest value whose version differs from the current
    one is restored. Serving functions follow within the pointer max age, without a cold start.
    """
    history = sorted(parameters.history(parameter_name), key=lambda p: p.version)
    current = ModelPointer.parse(history[-1].value)
    for entry in reversed(history[:-1]):
        try:
            candidate = ModelPointer.parse(entry.value)
        except ModelLoadError:
            continue  # e.g. the placeholder value a fresh stack starts with
        if candidate.version != current.version:
            parameters.put(parameter_name, candidate.to_json())
            return candidate
    raise ModelLoadError(f"{parameter_name} has no earlier model version to roll back to")


def main(argv: list[str] | None = None) -> int:
    """``python -m churnguard.model_store rollback POINTER`` | ``publish MODEL_DIR BUCKET POINTER``."""
    import argparse

    import boto3

    from churnguard.adapters import SsmParameterStore

    parser = argparse.ArgumentParser(prog="python -m churnguard.model_store")
    sub = parser.add_subparsers(dest="command", required=True)
    rollback = sub.add_parser("rollback", help="restore the previous model version")
    rollback.add_argument("parameter")
    publish = sub.add_parser("publish", help="upload a model directory and point at it")
    publish.add_argument("model_dir")
    publish.add_argument("bucket")
    publish.add_argument("parameter")
    args = parser.parse_args(argv)
    ssm = boto3.client("ssm")
    if args.command == "rollback":
        pointer = rollback_model(SsmParameterStore(ssm), args.parameter)
    else:
        pointer = publish_model(
            args.model_dir,
            s3_client=boto3.client("s3"),
            ssm_client=ssm,
            bucket=args.bucket,
            parameter_name=args.parameter,
        )
    print(pointer.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
