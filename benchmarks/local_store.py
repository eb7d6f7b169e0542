"""``churnguard.ports.ObjectStore`` on a local directory: ``<root>/<bucket>/<key>``.

For the scale benchmark: the domain code (``churnguard.dataset_drops``) runs unchanged against it, so
what is measured is its compute — reading, validating, hashing, gzip, scoring, Parquet — and not an
emulator's HTTP stack (moto's server is one Python process holding every object in memory: at tens of
millions of rows it would serialise the children's I/O and compete with them for the cores). The
requests a run makes are counted per operation, so S3's request latency and price can be added to a
projection explicitly. Writes are atomic (temporary file, then rename), like an S3 PUT.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from churnguard.ports import ListedObject, ObjectInfo

META_DIR = ".meta"  # user metadata, beside the buckets (never listed as an object)


class LocalObjectStore:
    """Objects as files; ``requests`` counts the calls by S3 operation (GET, PUT, COPY, LIST, HEAD)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.requests: Counter[str] = Counter()

    def path(self, bucket: str, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError("a key must stay inside its bucket")
        return self.root / bucket / key

    def get_bytes(self, bucket: str, key: str) -> bytes:
        self.requests["GET"] += 1
        return self.path(bucket, key).read_bytes()

    def get_range(self, bucket: str, key: str, start: int, stop: int) -> bytes:
        self.requests["GET"] += 1
        with self.path(bucket, key).open("rb") as fh:
            fh.seek(start)
            return fh.read(max(0, stop - start))

    def open(self, bucket: str, key: str) -> BinaryIO:
        self.requests["GET"] += 1
        return self.path(bucket, key).open("rb")

    def head(self, bucket: str, key: str) -> ObjectInfo:
        self.requests["HEAD"] += 1
        size = self.path(bucket, key).stat().st_size
        meta = self.root / META_DIR / bucket / f"{key}.json"
        metadata = json.loads(meta.read_text()) if meta.exists() else {}
        return ObjectInfo(size=size, metadata=metadata)

    def list_objects(self, bucket: str, prefix: str) -> list[ListedObject]:
        self.requests["LIST"] += 1
        base = self.root / bucket
        folder = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            key = path.relative_to(base).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.startswith(".tmp-"):
                stat = path.stat()
                modified = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC)
                found.append(ListedObject(key, stat.st_size, modified))
        return sorted(found, key=lambda o: o.key)

    def copy(self, bucket: str, source_key: str, key: str) -> None:
        self.requests["COPY"] += 1
        self._write(bucket, key, lambda tmp: shutil.copyfile(self.path(bucket, source_key), tmp))

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        for key in keys:
            self.requests["DELETE"] += 1
            self.path(bucket, key).unlink(missing_ok=True)

    def put_bytes(self, bucket: str, key: str, body: bytes, *, content_type: str | None = None) -> None:
        self.requests["PUT"] += 1
        self._write(bucket, key, lambda tmp: Path(tmp).write_bytes(body))

    def upload_file(
        self,
        path: str | Path,
        bucket: str,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.requests["PUT"] += 1
        self._write(bucket, key, lambda tmp: shutil.copyfile(path, tmp))
        if metadata:
            meta = self.root / META_DIR / bucket / f"{key}.json"
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps({k.lower(): v for k, v in metadata.items()}))

    def _write(self, bucket: str, key: str, fill: Callable[[str], object]) -> None:
        target = self.path(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        os.close(fd)
        try:
            fill(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
