"""Multi-part dataset drops: many part files of one export scored as one, through a shuffle by customer.

**Which drop a key is** (``classify_key``, a pure function of the key; ``incoming/`` is the drop prefix):

* ``incoming/<name>.csv|.csv.gz|.parquet`` — a **single drop**: scored alone, as before
  (``churnguard.batch.process_s3_object``).
* ``incoming/_parts/...``, ``incoming/_parts2/...`` — a **part of a split file**: the splitter's own
  output, scored as a single drop, as before (``churnguard.batch.split_level``).
* ``incoming/<dataset>/<name>`` (at any depth below the dataset folder, e.g. Spark's ``date=.../``
  folders) — a **part of dataset** ``<dataset>``: never scored alone.
* ``incoming/<dataset>/_SUCCESS`` or ``incoming/<dataset>/_manifest.json`` — the dataset's **marker**:
  it closes the dataset; it is never data.
* Any other key with a folder or file name starting with ``_`` or ``.`` (``_temporary/``, ``.crc``,
  ``_SUCCESS`` directly under ``incoming/``) is **never data** and is ignored; a folder placeholder
  (a key ending in ``/``) too. A data file with any other suffix is **unsupported**: reported (in the
  dataset's plan and summary), never scored.

**Marker and parts**: with ``_manifest.json`` (``DatasetManifest``: format version, optional
``as_of``, the parts by key relative to the dataset with optional sizes) the parts are exactly the
manifest's; a listed part missing (or of another size) fails the dataset naming it, a data file not in
the manifest is ignored and reported. With ``_SUCCESS`` only, the parts are the supported data files
listed under the dataset. A folder with a manifest is run by the manifest only: a ``_SUCCESS`` beside
it starts no run (``churnguard.dataset_steps``). A part holding no rows at all (zero bytes, a
compressed part of no bytes, a header only: Spark's empty partitions) is an empty part, not a failure.

**A listing that may be incomplete**: ``aws s3 cp --recursive`` uploads ``_SUCCESS`` (0 bytes, sorted
first) in parallel with the parts, so a run may plan before the last part lands. No partial dataset is
published ``ok`` silently: the plan records each part's size and ETag, and before phase 2 and again at
finish the dataset is listed anew (``dataset_changes``); a part added, removed or uploaded again fails
the run (``DatasetChanged``, naming the parts) before anything is scored, or before anything is
published. A part written after the marker (a later ``LastModified``) starts a newer run of its own
(the batch function), which plans the complete dataset; the superseded run keeps its failed summary
in its work area (``superseded_summary_key``) so it cannot overwrite the newer run's. A part in the
marker's second starts no run: the run that missed it writes the dataset's failed summary.

**The model** is fixed per run: the plan records its version, where its files are and the columns
phase 1 keeps; every later step scores with that version (``churnguard.dataset_steps.planned_bundle``),
never another, even when the pointer is promoted mid-run.

**Flow** (each step a pure function of the previous steps' results, against ``ObjectStore``):

1. ``plan_dataset`` lists the dataset and chooses N shards from its estimated rows with the admission
   memory model, so one shard is predicted to use at most half of what one invocation may.
2. ``partition_part`` (phase 1, one call per part, in parallel): streams the part, validates its rows
   (rejects carry the part and its row number), and writes the valid rows hash-partitioned by
   ``user_id`` into ``work/<dataset>/<run>/shard-SSSS/part-PPPP.csv.gz``. Re-running a part rewrites
   the same keys with the same bytes.
3. ``plan_shards``: once every part is partitioned, the dataset's one ``as_of`` (``dataset_as_of``:
   the manifest's, else the UTC day after the latest valid event over all parts, the rule batch uses
   for one file) and one task per non-empty shard; a failed part, or a shard that cannot fit one
   invocation by the exact counts of phase 1, fails the dataset here — before anything is scored or
   sent.
4. ``score_shard`` (phase 2, one call per shard, in parallel): reads all pieces of the shard (every
   part's), checks it got exactly what phase 1 wrote, and scores it with batch's scoring path
   (``churnguard.batch.score_sources``: same validation, reasons, tiers, promotions policy). Every
   customer of a shard has all their rows in it, so they are scored once, on their whole history.
   Promotions use the dataset as their source, so their idempotency key is (dataset, customer,
   model version, as-of day): a shard scored again sends nothing twice through the ledger.
5. ``finish_dataset``: checks the dataset-level invariants (rows in = used + rejected over all parts;
   each shard read exactly what the parts wrote for it and scored customers of its own hash only;
   one as-of and one model version; promotions <= customers) and only then **publishes**: copies the
   shards' Parquet to ``scored/<dataset>/part-SSSS.parquet``, joins the parts' rejects into
   ``scored/<dataset>/_rejects.csv`` (``part,source_row,reason``), and writes
   ``scored/<dataset>/_summary.json`` last. A dataset that fails anything gets only its summary
   (``status: failed`` with every error): nothing else under ``scored/<dataset>/`` is written, so it
   is never half-published. The dataset's own objects live *inside* its folder, with a leading
   underscore: ``scored/<dataset>.summary.json`` is the summary of a single drop
   ``incoming/<dataset>.csv`` and must not be overwritten by a dataset of the same name; no single
   drop or split part can write under ``scored/<dataset>/`` (``incoming/<dataset>/...`` is never a
   single drop, and a part file's name never starts with ``_``). Promotions are the exception by
   nature: a shard sends its customers' promotions when it is scored (each customer is complete and
   the as-of fixed by then).

**Drift** (``churnguard.drift``): the dataset's summary carries the same ``drift`` section as a batch
file's, over all its customers. Each shard's result carries the bin counts of the customers it scored
(``ShardResult.drift_counts``: one count per bin, whatever the shard's size); finish merges every
shard's counts and computes the PSI of the merged counts against the planned model's reference
(``dataset_drift``), so the PSI is the one of scoring all the customers as one file, never an average
of the shards' PSIs. Below ``churnguard.drift.MIN_CUSTOMERS`` customers over the whole dataset it is
null, with its status, as for a file.

Working objects live under ``work/<dataset>/<run>/``, where the run id is a hash of the plan (the
parts, their sizes and ETags, the as-of, N and the model version): a retried step writes the same
keys, and a re-drop with other parts or other bytes cannot mix its pieces with an earlier run's.
Shard pieces quote every field, so any value (a bare ``\r`` in a padded id) reads back as written.
The summary lists the output objects it published.
Nothing here logs: results carry counts, and error texts (which may quote a file) go to the summary.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import gzip
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import pandas as pd
from botocore.exceptions import BotoCoreError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from churnguard.admission import MAX_SPLIT_ROWS, MemoryModel
from churnguard.batch import (
    DEFAULT_MEMORY,
    FILE_ERRORS,
    SOURCE_ROW,
    SUPPORTED_SUFFIXES,
    BatchSummary,
    EmptyFileError,
    EventSource,
    FileTooLargeError,
    as_of_after,
    customer_hash,
    estimate_rows,
    iter_chunks,
    read_columns,
    score_sources,
    split_level,
    write_scored,
)
from churnguard.bundle import ModelBundle
from churnguard.decisions import Decisions
from churnguard.drift import DriftCounts, DriftReference, drift_summary
from churnguard.events import EventLogError, validate_events
from churnguard.ports import ListedObject, ObjectStore
from churnguard.promotions import PromotionPolicy, PromotionsPublisher
from churnguard.scoring import ReasonsFor
from churnguard.validation import describe

INCOMING_PREFIX = "incoming/"
SUCCESS_MARKER = "_SUCCESS"
MANIFEST_NAME = "_manifest.json"
MARKERS = (MANIFEST_NAME, SUCCESS_MARKER)
WORK_PREFIX = "work/"
SCORED_PREFIX = "scored/"
SOURCE_PART = "_source_part"  # the part's index in the plan, carried by every row of a shard piece
# The same hash family as the splitter (churnguard.batch.customer_hash), with a key of its own
# (16 characters, as pandas requires).
DATASET_HASH_KEY = "churnguard-data0"
# Customers are unknown before reading: N is sized assuming one customer per 2 rows. With the 2x
# headroom of shards_for that still covers a dataset of one-event customers (80 + 450 B per row
# against 2 x (80 + 225) B); the exact counts of phase 1 are checked again before phase 2.
ASSUMED_ROWS_PER_CUSTOMER = 2
# A Parquet part's rows are known only once decoded: its rows are estimated from bytes, low on
# bytes per row (so high on rows, hence on shards) for dictionary-encoded event columns.
PARQUET_BYTES_PER_ROW = 8
SAMPLED_PARTS = 8  # CSV parts sampled (one ranged GET each) to estimate rows per byte per format


class DatasetError(EventLogError):
    """A dataset that cannot be scored as dropped (no marker, bad manifest, missing part, ...)."""


class ManifestError(DatasetError):
    """The manifest is not valid; the message names the field."""


class ShardMismatchError(EventLogError):
    """A shard did not read exactly what phase 1 wrote for it; raised before anything is scored."""


# --- which drop a key is ------------------------------------------------------------------------------


class DropKind(StrEnum):
    SINGLE = "single"  # scored alone (churnguard.batch.process_s3_object)
    SPLIT_PART = "split_part"  # a part written by the splitter: scored alone, as before
    DATASET_PART = "dataset_part"  # data of a dataset: scored through the shuffle once it is closed
    MARKER = "marker"  # closes a dataset: plan it
    IGNORED = "ignored"  # never data
    UNSUPPORTED = "unsupported"  # looks like data, in a format that is not read: reported
    OUTSIDE = "outside"  # not under the drop prefix


@dataclass(frozen=True)
class DropKey:
    kind: DropKind
    dataset: str | None = None  # DATASET_PART, MARKER, UNSUPPORTED within a dataset
    relative: str | None = None  # the key below the dataset folder


def classify_key(key: str, incoming_prefix: str = INCOMING_PREFIX) -> DropKey:
    """What a key under the drop prefix is (the rule in the module docstring)."""
    if not key.startswith(incoming_prefix):
        return DropKey(DropKind.OUTSIDE)
    if split_level(key) >= 1:  # the splitter's reserved prefixes keep their meaning
        return DropKey(DropKind.SPLIT_PART)
    segments = key[len(incoming_prefix) :].split("/")
    dataset = segments[0] if len(segments) > 1 and not _hidden(segments[0]) else None
    relative = "/".join(segments[1:]) if dataset is not None else None
    if dataset is not None and len(segments) == 2 and segments[1] in MARKERS:
        return DropKey(DropKind.MARKER, dataset, relative)
    if any(_hidden(s) for s in segments):
        return DropKey(DropKind.IGNORED, dataset, relative)
    if not segments[-1].lower().endswith(SUPPORTED_SUFFIXES):
        return DropKey(DropKind.UNSUPPORTED, dataset, relative)
    if dataset is None:
        return DropKey(DropKind.SINGLE)
    return DropKey(DropKind.DATASET_PART, dataset, relative)


def _hidden(segment: str) -> bool:
    """Not data: an internal or temporary name, or an empty folder name (``a//b``, a placeholder)."""
    return segment == "" or segment.startswith(("_", "."))


# --- the manifest ---------------------------------------------------------------------------------------


class ManifestPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str  # relative to the dataset folder
    size: int | None = Field(default=None, ge=0)  # bytes; checked against the listing when given

    @field_validator("key")
    @classmethod
    def _a_data_file_below_the_dataset(cls, key: str) -> str:
        if key.startswith("/") or any(_hidden(s) or s == ".." for s in key.split("/")):
            raise ValueError("must be a path below the dataset folder without '..' or '_'/'.' names")
        if not key.lower().endswith(SUPPORTED_SUFFIXES):
            raise ValueError(f"must end with one of {', '.join(SUPPORTED_SUFFIXES)}")
        return key


class DatasetManifest(BaseModel):
    """``_manifest.json``: ``{"format_version": 1, "as_of": "2026-11-28", "parts": [{"key":
    "part-0000.csv.gz", "size": 123}]}``. Unknown keys are refused (a typo must not be ignored); an
    incompatible change bumps the version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = 1
    as_of: dt.date | None = None
    parts: list[ManifestPart] = Field(min_length=1)

    @field_validator("parts")
    @classmethod
    def _each_part_once(cls, parts: list[ManifestPart]) -> list[ManifestPart]:
        keys = [p.key for p in parts]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"each part must be listed once; repeated: {repeated}")
        return parts


def parse_manifest(body: bytes) -> DatasetManifest:
    """The manifest, or ``ManifestError`` naming the field (``parts[1].key: ...``)."""
    try:
        return DatasetManifest.model_validate_json(body)
    except ValidationError as exc:
        raise ManifestError(f"{MANIFEST_NAME} is not valid: {describe(exc, root='manifest')}") from None


# --- the plan -------------------------------------------------------------------------------------------


class PlannedPart(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    relative: str  # the key below the dataset folder
    key: str
    size: int
    estimated_rows: int = 0
    etag: str = ""  # as listed at plan time: a part uploaded again has another one


class IgnoredObject(BaseModel):
    model_config = ConfigDict(frozen=True)

    relative: str
    reason: str


class DatasetPlan(BaseModel):
    """What a dataset is made of and how it is shuffled; JSON between the steps of a run."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    dataset: str
    run_id: str
    marker: str  # MANIFEST_NAME or SUCCESS_MARKER: what closed the dataset
    parts: list[PlannedPart]
    shards: int = Field(ge=1)
    as_of: dt.date | None = None  # the manifest's; None: from the data (dataset_as_of)
    estimated_rows: int = 0
    ignored: list[IgnoredObject] = Field(default_factory=list)
    incoming_prefix: str = INCOMING_PREFIX
    # The model the whole run scores with, fixed when planning (the pointer may move mid-run): its
    # version, where its files are (to load it again if the pointer moved) and the columns phase 1
    # keeps (what that model reads). None: no model known at plan time (tests; every column kept).
    model_version: str | None = None
    model_location: str | None = None
    columns: list[str] | None = None

    @property
    def source(self) -> str:
        """The dataset as one source: promotions' idempotency keys are built from it."""
        return f"s3://{self.bucket}/{self.incoming_prefix}{self.dataset}/"

    @property
    def work_prefix(self) -> str:
        return f"{WORK_PREFIX}{self.dataset}/{self.run_id}/"

    def piece_key(self, shard: int, part: int) -> str:
        return f"{self.work_prefix}shard-{shard:04d}/part-{part:04d}.csv.gz"

    def part_rejects_key(self, part: int) -> str:
        return f"{self.work_prefix}rejects/part-{part:04d}.csv"

    def shard_scored_key(self, shard: int) -> str:
        return f"{self.work_prefix}scored/part-{shard:04d}.parquet"

    @property
    def output_prefix(self) -> str:
        """Where the run publishes: a folder of its own under the dataset's, so a failed publication
        never mixes with the current outputs, and the summary (the dataset's pointer) names the run."""
        return f"{SCORED_PREFIX}{self.dataset}/{self.run_id}/"

    def output_key(self, shard: int) -> str:
        return f"{self.output_prefix}part-{shard:04d}.parquet"

    @property
    def rejects_key(self) -> str:
        return f"{self.output_prefix}_rejects.csv"

    @property
    def summary_key(self) -> str:
        return summary_key(self.dataset)


def superseded_summary_key(plan: DatasetPlan) -> str:
    """Where a run superseded by a newer run of its dataset keeps its failed summary."""
    return f"{plan.work_prefix}superseded_summary.json"


# Inside the dataset's output folder, named as no part output can be: ``scored/<dataset>.summary.json``
# belongs to a single drop ``incoming/<dataset>.csv`` (see the module docstring).
def summary_key(dataset: str) -> str:
    return f"{SCORED_PREFIX}{dataset}/_summary.json"


def select_parts(
    listing: Mapping[str, int], manifest: DatasetManifest | None
) -> tuple[list[tuple[str, int]], list[IgnoredObject]]:
    """The parts (relative key, size) of a dataset from its listing (relative key -> size), and what
    was listed but is not a part, with why. A manifest's missing or resized part raises."""
    kinds = {rel: classify_key(f"{INCOMING_PREFIX}d/{rel}").kind for rel in listing}
    ignored = [
        IgnoredObject(relative=rel, reason="unsupported file type: not scored")
        for rel, kind in kinds.items()
        if kind is DropKind.UNSUPPORTED
    ]
    if manifest is None:
        return [(r, s) for r, s in listing.items() if kinds[r] is DropKind.DATASET_PART], ignored
    missing = [p.key for p in manifest.parts if p.key not in listing]
    if missing:
        raise DatasetError(f"the manifest names part(s) that are not in the dataset: {missing}")
    resized = [
        f"{p.key} ({listing[p.key]:,} bytes, the manifest says {p.size:,})"
        for p in manifest.parts
        if p.size is not None and listing[p.key] != p.size
    ]
    if resized:
        raise DatasetError(f"part(s) differ in size from the manifest (incomplete upload?): {resized}")
    named = {p.key for p in manifest.parts}
    ignored += [
        IgnoredObject(relative=rel, reason="not in the manifest: not scored")
        for rel, kind in kinds.items()
        if kind is DropKind.DATASET_PART and rel not in named
    ]
    return [(p.key, listing[p.key]) for p in manifest.parts], ignored


def shards_for_rows(rows: int, memory: MemoryModel) -> int:
    """N for a dataset of ``rows`` estimated rows (customers assumed: see ASSUMED_ROWS_PER_CUSTOMER)."""
    return memory.shards_for(rows, math.ceil(rows / ASSUMED_ROWS_PER_CUSTOMER))


def plan_dataset(
    store: ObjectStore,
    bucket: str,
    dataset: str,
    *,
    memory: MemoryModel = DEFAULT_MEMORY,
    shards: int | None = None,
    incoming_prefix: str = INCOMING_PREFIX,
    bundle: ModelBundle | None = None,
    model_location: str | None = None,
) -> DatasetPlan:
    """The plan of a closed dataset (``DatasetError`` when it cannot be scored: no marker, bad
    manifest, missing part, no data, a part too large for one pass). ``shards`` overrides N.
    ``bundle`` (at ``model_location``) is the model every step of the run scores with."""
    prefix = f"{incoming_prefix}{dataset}/"
    listed = {o.key[len(prefix) :]: o for o in store.list_objects(bucket, prefix)}
    listing = {rel: o.size for rel, o in listed.items()}
    manifest = None
    if MANIFEST_NAME in listing:
        manifest = parse_manifest(store.get_bytes(bucket, prefix + MANIFEST_NAME))
    elif SUCCESS_MARKER not in listing:
        raise DatasetError(f"the dataset is not closed: no {SUCCESS_MARKER} or {MANIFEST_NAME}")
    selected, ignored = select_parts(listing, manifest)
    if not selected:
        raise DatasetError("the dataset has no data files")
    parts = [
        p.model_copy(update={"etag": listed[p.relative].etag})
        for p in _with_row_estimates(
            store, bucket, [(i, r, prefix + r, s) for i, (r, s) in enumerate(selected)]
        )
    ]
    too_long = [
        f"{p.relative} (~{p.estimated_rows:,} rows)" for p in parts if p.estimated_rows > MAX_SPLIT_ROWS
    ]
    if too_long:
        raise DatasetError(
            f"part(s) too large for one pass within a function's 15 minutes ({MAX_SPLIT_ROWS:,} rows): "
            f"{too_long}; export smaller parts"
        )
    rows = sum(p.estimated_rows for p in parts)
    n = shards if shards is not None else shards_for_rows(rows, memory)
    as_of = manifest.as_of if manifest is not None else None
    version = bundle.version if bundle is not None else None
    return DatasetPlan(
        bucket=bucket,
        dataset=dataset,
        run_id=_run_id(dataset, parts, as_of, n, version),
        marker=MANIFEST_NAME if manifest is not None else SUCCESS_MARKER,
        parts=parts,
        shards=n,
        as_of=as_of,
        estimated_rows=rows,
        ignored=ignored,
        incoming_prefix=incoming_prefix,
        model_version=version,
        model_location=model_location,
        # Dataset parts are never split parts: the columns do not depend on the part's key.
        columns=list(read_columns(bundle, prefix)) if bundle is not None else None,
    )


@dataclass(frozen=True)
class DatasetChanges:
    """How a dataset listed now differs from its plan."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # uploaded again: another size or ETag
    other: list[str] = field(default_factory=list)  # the manifest removed, added or made invalid
    after_marker: bool = False  # an added or changed part was written after the run's marker
    manifest_added: bool = False  # a _SUCCESS run, and a manifest came since: the manifest's run rules

    @property
    def errors(self) -> list[str]:
        what = [(self.added, "added"), (self.removed, "removed"), (self.changed, "changed (uploaded again)")]
        parts = [f"part(s) {label} since the dataset was planned: {rels}" for rels, label in what if rels]
        return self.other + parts

    @property
    def superseded(self) -> bool:
        """A part was added or uploaded again after the marker was written: its own event started
        a newer run of the dataset (the batch function), which writes the dataset's summary; this
        run's failure must not overwrite it. Otherwise (a part in the marker's second, a part
        removed) no newer run is sure to come: this run writes the dataset's failed summary."""
        return self.manifest_added or (self.after_marker and bool(self.added or self.changed))


def dataset_changes(store: ObjectStore, plan: DatasetPlan) -> DatasetChanges:
    """What differs between the dataset as listed now and its plan (added, removed or re-uploaded
    parts): any difference means the run scored an incomplete or stale listing (``_SUCCESS``
    written before the last part, a part replaced mid-run), so it must publish nothing."""
    prefix = f"{plan.incoming_prefix}{plan.dataset}/"
    listed = {o.key[len(prefix) :]: o for o in store.list_objects(plan.bucket, prefix)}
    manifest = None
    if plan.marker == MANIFEST_NAME:
        if MANIFEST_NAME not in listed:
            return DatasetChanges(other=[f"{MANIFEST_NAME} was removed"])
        try:
            manifest = parse_manifest(store.get_bytes(plan.bucket, prefix + MANIFEST_NAME))
        except ManifestError as exc:
            return DatasetChanges(other=[str(exc)])
    elif MANIFEST_NAME in listed:
        return DatasetChanges(
            other=[f"{MANIFEST_NAME} was added after the run started from {SUCCESS_MARKER}"],
            manifest_added=True,
        )
    try:
        selected, _ = select_parts({rel: o.size for rel, o in listed.items()}, manifest)
    except DatasetError as exc:
        return DatasetChanges(other=[str(exc)])
    now = {rel: (size, listed[rel].etag) for rel, size in selected}
    planned = {p.relative: (p.size, p.etag) for p in plan.parts}
    added = sorted(set(now) - set(planned))
    changed = sorted(r for r in set(now) & set(planned) if now[r] != planned[r])
    marker = listed.get(plan.marker)
    after = marker is not None and any(
        listed[r].last_modified > marker.last_modified for r in added + changed
    )
    return DatasetChanges(
        added=added, removed=sorted(set(planned) - set(now)), changed=changed, after_marker=after
    )


def _with_row_estimates(
    store: ObjectStore, bucket: str, parts: Sequence[tuple[int, str, str, int]]
) -> list[PlannedPart]:
    """Rows per part: CSV from rows per byte of a few sampled parts of its format (batch's estimate
    from a ranged GET), Parquet from bytes (see PARQUET_BYTES_PER_ROW)."""
    per_byte: dict[str, float] = {}
    for suffix in (".csv.gz", ".csv"):
        group = [p for p in parts if _suffix(p[2]) == suffix and p[3] > 0]
        sampled = sorted(group, key=lambda p: (-p[3], p[0]))[:SAMPLED_PARTS]
        estimates = [estimate_rows(store, bucket, key, size) for _, _, key, size in sampled]
        rows = sum(e.rows for e in estimates if e is not None)
        per_byte[suffix] = rows / max(sum(p[3] for p in sampled), 1)
    per_byte[".parquet"] = 1 / PARQUET_BYTES_PER_ROW
    return [
        PlannedPart(
            index=i, relative=rel, key=key, size=size, estimated_rows=math.ceil(size * per_byte[_suffix(key)])
        )
        for i, rel, key, size in parts
    ]


def _suffix(key: str) -> str:
    lower = key.lower()
    return next(s for s in (".csv.gz", ".csv", ".parquet") if lower.endswith(s))


def _run_id(
    dataset: str, parts: Sequence[PlannedPart], as_of: dt.date | None, shards: int, model: str | None
) -> str:
    what = [dataset, [(p.relative, p.size, p.etag) for p in parts], str(as_of), shards, model]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]


# --- datasets whose marker has not come ---------------------------------------------------------------


@dataclass(frozen=True)
class PendingDataset:
    dataset: str
    parts: int
    age_s: float  # since its oldest part was written


def pending_datasets(
    listing: Iterable[ListedObject], now: dt.datetime, incoming_prefix: str = INCOMING_PREFIX
) -> list[PendingDataset]:
    """Datasets with data files but no marker in a listing of the drop prefix, oldest first."""
    oldest: dict[str, dt.datetime] = {}
    counts: dict[str, int] = {}
    closed: set[str] = set()
    for obj in listing:
        drop = classify_key(obj.key, incoming_prefix)
        if drop.kind is DropKind.MARKER and drop.dataset is not None:
            closed.add(drop.dataset)
        elif drop.kind is DropKind.DATASET_PART and drop.dataset is not None:
            counts[drop.dataset] = counts.get(drop.dataset, 0) + 1
            oldest[drop.dataset] = min(oldest.get(drop.dataset, obj.last_modified), obj.last_modified)
    pending = [
        PendingDataset(name, counts[name], (now - oldest[name]).total_seconds())
        for name in counts
        if name not in closed
    ]
    return sorted(pending, key=lambda p: -p.age_s)


# --- phase 1: partition one part ------------------------------------------------------------------------


class PartResult(BaseModel):
    part: int
    relative: str
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None  # for the data owner: may quote the file
    error_type: str | None = None
    rows_in: int = 0
    rows_rejected: int = 0
    rows_per_shard: dict[int, int] = Field(default_factory=dict)  # valid rows written, non-empty shards
    customers_per_shard: dict[int, int] = Field(default_factory=dict)  # distinct within this part
    latest_event: dt.datetime | None = None  # the latest valid event (UTC, naive)
    keys_written: list[str] = Field(default_factory=list)
    duration_s: float = 0.0


@dataclass
class _PartTally:
    shards: int
    rows_in: int = 0
    rows_rejected: int = 0
    rows: np.ndarray = field(init=False)
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    latest: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        self.rows = np.zeros(self.shards, dtype=np.int64)

    def add(self, hashes: np.ndarray, shard_of: np.ndarray, timestamps: pd.Series) -> None:
        self.rows += np.bincount(shard_of, minlength=self.shards)
        # 64-bit hashes stand for customers (8 B each, not a set of ids); a collision would only
        # undercount by one, far below the headroom these counts are checked with.
        self.hashes = np.union1d(self.hashes, hashes)
        latest = timestamps.max()
        self.latest = latest if self.latest is None else max(self.latest, latest)

    def customers(self) -> np.ndarray:
        return np.bincount((self.hashes % np.uint64(self.shards)).astype(np.int64), minlength=self.shards)


class _ShardFiles:
    """One local gzip CSV per shard, appended chunk by chunk as separate gzip members (a valid gzip
    file): only one file is open at a time, whatever N (Lambda allows 1,024 descriptors)."""

    def __init__(self, directory: str, shards: int) -> None:
        self.paths = [Path(directory) / f"shard-{s:04d}.csv.gz" for s in range(shards)]
        self.started = np.zeros(shards, dtype=bool)

    def append(self, rows: pd.DataFrame, shard_of: np.ndarray) -> None:
        order = np.argsort(shard_of, kind="stable")  # stable: a part's row order within a shard
        rows, sorted_shards = rows.iloc[order], shard_of[order]
        bounds = np.searchsorted(sorted_shards, np.arange(len(self.paths) + 1))
        for shard in np.unique(sorted_shards).tolist():
            # QUOTE_ALL: a value with a bare '\r' (valid once stripped) must read back as one field.
            text = rows.iloc[bounds[shard] : bounds[shard + 1]].to_csv(
                index=False, header=not self.started[shard], quoting=csv.QUOTE_ALL
            )
            with self.paths[shard].open("ab") as out:
                out.write(gzip.compress(text.encode(), compresslevel=1, mtime=0))  # mtime 0: same bytes
            self.started[shard] = True


def partition_part(
    store: ObjectStore,
    plan: DatasetPlan,
    part: int,
    *,
    columns: Collection[str] | None = None,
    chunk_rows: int = 500_000,
    tmp_dir: str | None = None,
) -> PartResult:
    """Phase 1 for one part: its valid rows into the shard pieces, its rejected rows into its rejects
    object. ``columns``: what to keep of the part (``read_columns(bundle, key)``; None: all). A bad
    part ends in a failed result (nothing uploaded); a transient AWS error propagates (retry)."""
    started = time.perf_counter()
    planned = plan.parts[part]
    result = PartResult(part=part, relative=planned.relative)
    tally = _PartTally(plan.shards)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        files = _ShardFiles(tmp, plan.shards)
        rejects_path = Path(tmp) / "rejects.csv"
        try:
            with rejects_path.open("w", newline="") as rejects:
                if planned.size > 0:  # an empty part (an empty partition of the export) has no rows
                    body = store.open(plan.bucket, planned.key)
                    reading = _PartReading(planned, plan.shards, columns, chunk_rows)
                    _partition_rows(body, reading, files, tally, rejects)
        except FILE_ERRORS as exc:
            _reraise_transient_error(exc)
            return result.model_copy(update=_failure(exc, tally, started))
        written = _upload_part_outputs(store, plan, part, files, tally, rejects_path)
    customers = tally.customers()
    return result.model_copy(
        update={
            "rows_in": tally.rows_in,
            "rows_rejected": tally.rows_rejected,
            "rows_per_shard": {s: int(n) for s, n in enumerate(tally.rows.tolist()) if n},
            "customers_per_shard": {s: int(n) for s, n in enumerate(customers.tolist()) if n},
            "latest_event": None if tally.latest is None else tally.latest.to_pydatetime(),
            "keys_written": written,
            "duration_s": round(time.perf_counter() - started, 3),
        }
    )


@dataclass(frozen=True)
class _PartReading:
    part: PlannedPart
    shards: int
    columns: Collection[str] | None
    chunk_rows: int


def _partition_rows(
    body: Any, reading: _PartReading, files: _ShardFiles, tally: _PartTally, rejects: TextIO
) -> None:
    """Stream, validate (as batch does, chunk by chunk) and hash-partition the part's rows."""
    rejects.write("part,source_row,reason\n")
    row = 1
    for raw in _chunks_or_none(body, reading):
        # A part's own columns of these names are not ours (as batch ignores a dropped file's).
        chunk = raw.drop(columns=[SOURCE_ROW, SOURCE_PART], errors="ignore")
        validated = validate_events(chunk, first_row_number=row)
        tally.rows_in += validated.rows_in
        tally.rows_rejected += len(validated.rejected)
        if len(validated.rejected):
            validated.rejected.assign(part=reading.part.relative)[["part", "source_row", "reason"]].to_csv(
                rejects, header=False, index=False
            )
        events = validated.events
        if len(events):
            source_rows = events["source_row"].to_numpy(dtype=np.int64)
            # The valid rows as read (phase 2 validates them again, to the same values), without
            # event_id: duplicates were rejected here, so a piece never has a row phase 2 rejects.
            rows = chunk.iloc[source_rows - row].drop(columns="event_id", errors="ignore")
            rows = rows.assign(**{SOURCE_PART: reading.part.index, SOURCE_ROW: source_rows})
            hashes = customer_hash(events["user_id"].to_numpy(dtype=object), DATASET_HASH_KEY)
            shard_of = (hashes % np.uint64(reading.shards)).astype(np.int64)
            files.append(rows, shard_of)
            tally.add(hashes, shard_of, events["timestamp"])
        row += len(chunk)


def _chunks_or_none(body: Any, reading: _PartReading) -> Iterable[pd.DataFrame]:
    """The part's chunks; a part that holds nothing at all (a compressed part of no bytes: an empty
    partition of the export, like a zero-byte part) has no rows rather than failing."""
    try:
        yield from iter_chunks(body, reading.part.key, reading.chunk_rows, columns=reading.columns)
    except EmptyFileError:
        return


def _upload_part_outputs(
    store: ObjectStore,
    plan: DatasetPlan,
    part: int,
    files: _ShardFiles,
    tally: _PartTally,
    rejects_path: Path,
) -> list[str]:
    """Upload the non-empty pieces and, when there are any, the rejected rows; the keys written."""
    written = []
    for shard in np.flatnonzero(files.started).tolist():
        key = plan.piece_key(shard, part)
        store.upload_file(files.paths[shard], plan.bucket, key)
        written.append(key)
    if tally.rows_rejected:
        key = plan.part_rejects_key(part)
        store.upload_file(rejects_path, plan.bucket, key, content_type="text/csv")
        written.append(key)
    return written


def _failure(exc: BaseException, tally: _PartTally, started: float) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "error_type": type(exc).__name__,
        "rows_in": tally.rows_in,
        "rows_rejected": tally.rows_rejected,
        "duration_s": round(time.perf_counter() - started, 3),
    }


def _reraise_transient_error(exc: BaseException) -> None:
    """Transient AWS errors (some are OSErrors, hence FILE_ERRORS) propagate: the orchestrator
    retries the step; see ``churnguard.batch``."""
    if isinstance(exc, BotoCoreError):
        raise exc


# --- between the phases: one as-of, one task per shard -----------------------------------------------


def dataset_as_of(plan: DatasetPlan, parts: Sequence[PartResult]) -> str | None:
    """The manifest's as-of, else the day after the latest valid event over all parts (None: no
    valid event anywhere)."""
    if plan.as_of is not None:
        return plan.as_of.isoformat()
    latest = [p.latest_event for p in parts if p.latest_event is not None]
    return as_of_after(pd.Timestamp(max(latest))) if latest else None


class ShardTask(BaseModel):
    shard: int
    as_of: str
    pieces: list[str]  # every part's piece of this shard, in part order
    rows: int  # valid rows phase 1 wrote for it
    customers_at_least: int  # the most any one part had
    customers_at_most: int  # the sum over parts (a customer spanning parts counts in each)


class Shuffle(BaseModel):
    as_of: str | None
    tasks: list[ShardTask]
    errors: list[str] = Field(default_factory=list)  # any: phase 2 must not run


def plan_shards(
    plan: DatasetPlan, parts: Sequence[PartResult], *, memory: MemoryModel = DEFAULT_MEMORY
) -> Shuffle:
    """After phase 1: the dataset's as-of and the shards to score, or why phase 2 must not run."""
    errors = _part_errors(plan, parts)
    if errors:
        return Shuffle(as_of=None, tasks=[], errors=errors)
    by_part = sorted(parts, key=lambda p: p.part)
    as_of = dataset_as_of(plan, by_part)
    tasks = []
    for shard in range(plan.shards):
        having = [p for p in by_part if p.rows_per_shard.get(shard)]
        if not having or as_of is None:
            continue
        customers = [p.customers_per_shard.get(shard, 0) for p in having]
        tasks.append(
            ShardTask(
                shard=shard,
                as_of=as_of,
                pieces=[plan.piece_key(shard, p.part) for p in having],
                rows=sum(p.rows_per_shard[shard] for p in having),
                customers_at_least=max(customers),
                customers_at_most=sum(customers),
            )
        )
    errors = [
        f"shard {t.shard} holds {t.rows:,} rows of up to {t.customers_at_most:,} customers, more than one "
        f"invocation may hold ({memory.usable_mb:,.0f} MB): score the dataset with more shards"
        for t in tasks
        if not memory.fits(t.rows, t.customers_at_most, 0)
    ]
    return Shuffle(as_of=as_of, tasks=[] if errors else tasks, errors=errors)


def _part_errors(plan: DatasetPlan, parts: Sequence[PartResult]) -> list[str]:
    """Every planned part must have exactly one result, and an ``ok`` one."""
    indexes = [p.part for p in parts]
    errors = [f"part {p.relative}: no result" for p in plan.parts if p.index not in indexes]
    errors += [f"part {i}: {indexes.count(i)} results" for i in sorted(set(indexes)) if indexes.count(i) > 1]
    errors += [f"part {i}: not in the plan" for i in sorted(set(indexes)) if not 0 <= i < len(plan.parts)]
    errors += [f"part {p.relative} failed: {p.error}" for p in parts if p.status != "ok"]
    return errors


# --- phase 2: score one shard ---------------------------------------------------------------------------


class ShardResult(BaseModel):
    shard: int
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    error_type: str | None = None
    as_of: str | None = None
    model_version: str | None = None
    rows_in: int = 0
    rows_used: int = 0
    rows_rejected: int = 0
    customers_scored: int = 0
    customers_at_or_above_promotion: int = 0
    customers_queued: int = 0
    customers_held_out: int = 0
    monitoring_sample: int = 0
    promotion_failures: list[dict[str, Any]] = Field(default_factory=list)
    scored_key: str | None = None
    duration_s: float = 0.0
    # The drift bin counts of the customers scored (``DriftCounts.to_dict``, merged at finish);
    # None: the model has no drift reference, or the shard failed.
    drift_counts: dict[str, Any] | None = None


@dataclass(frozen=True)
class _ShardCheck:
    """Run once the shard is read, before anything is scored or sent: it read exactly what phase 1
    wrote for it (a missing or stale piece shows here), and only customers of its own hash."""

    shards: int
    task: ShardTask

    def __call__(self, summary: BatchSummary, user_ids: Sequence[str]) -> None:
        task = self.task
        if summary.rows_in != task.rows or summary.rows_rejected:
            raise ShardMismatchError(
                f"shard {task.shard} read {summary.rows_in:,} rows ({summary.rows_rejected:,} rejected); "
                f"phase 1 wrote {task.rows:,} valid rows for it"
            )
        if not task.customers_at_least <= len(user_ids) <= task.customers_at_most:
            raise ShardMismatchError(
                f"shard {task.shard} read {len(user_ids):,} customers; phase 1 counted "
                f"{task.customers_at_least:,} to {task.customers_at_most:,}"
            )
        hashes = customer_hash(np.asarray(user_ids, dtype=object), DATASET_HASH_KEY)
        if np.any(hashes % np.uint64(self.shards) != np.uint64(task.shard)):
            raise ShardMismatchError(f"shard {task.shard} read customers of another shard")


def score_shard(
    store: ObjectStore,
    plan: DatasetPlan,
    task: ShardTask,
    bundle: ModelBundle,
    *,
    policy: PromotionPolicy,
    publisher: PromotionsPublisher | None,
    decisions: Decisions | None = None,
    reasons_for: ReasonsFor = ReasonsFor.PROMOTED,
    memory: MemoryModel = DEFAULT_MEMORY,
    now: dt.datetime | None = None,
    tmp_dir: str | None = None,
) -> ShardResult:
    """Phase 2 for one shard: score its customers on all their rows, send their promotions (keyed
    on the dataset), write the shard's Parquet to the run's work area (published by
    ``finish_dataset``). A shard that does not read as planned fails before scoring or sending."""
    started = time.perf_counter()
    pieces = [EventSource(k, functools.partial(store.open, plan.bucket, k)) for k in task.pieces]
    columns = (*read_columns(bundle, plan.work_prefix), SOURCE_ROW)  # the pieces carry row numbers
    reference = _KeptCounts.of(bundle.drift_reference)
    try:
        result = score_sources(
            pieces,
            bundle if reference is None else replace(bundle, drift_reference=reference),
            as_of=task.as_of,
            policy=policy,
            publisher=publisher,
            decisions=decisions,
            source=plan.source,
            reasons_for=reasons_for,
            memory=memory,
            now=now,
            columns=columns,
            before_scoring=_ShardCheck(plan.shards, task),
        )
    except FileTooLargeError as exc:
        return ShardResult(
            shard=task.shard,
            status="failed",
            error=f"the shard does not fit one invocation: {exc}; score the dataset with more shards",
            error_type="ShardTooLarge",
            duration_s=round(time.perf_counter() - started, 3),
        )
    scored_key = None
    if result.summary.status == "ok" and result.scored is not None:
        scored_key = plan.shard_scored_key(task.shard)
        with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
            write_scored(store, plan.bucket, scored_key, result.scored, tmp)
    summary = result.summary
    fields = {k: v for k, v in vars(summary).items() if k in ShardResult.model_fields}
    fields.update(shard=task.shard, scored_key=scored_key, duration_s=round(time.perf_counter() - started, 3))
    if reference is not None and summary.status == "ok":
        fields["drift_counts"] = reference.kept_counts().to_dict()
    return ShardResult.model_validate(fields)


@dataclass(frozen=True)
class _KeptCounts(DriftReference):
    """The model's drift reference, keeping the bin counts scoring adds the shard's customers to.

    Batch scoring (``churnguard.batch``) takes its accumulator from ``DriftReference.counts`` and
    reports only the PSI of it (``BatchSummary.drift``); a shard needs the counts themselves, for
    finish to merge them with the other shards'. Scoring with this reference in the bundle keeps each
    accumulator handed out; ``kept_counts`` is their sum (empty counts if nothing was scored)."""

    kept: list[DriftCounts] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(cls, reference: DriftReference | None) -> _KeptCounts | None:
        return None if reference is None else cls(reference.score, reference.features, reference.customers)

    def counts(self) -> DriftCounts:
        counts = super().counts()
        self.kept.append(counts)
        return counts

    def kept_counts(self) -> DriftCounts:
        total = super().counts()
        for counts in self.kept:
            total = total.merge(counts)
        return total


# --- the dataset's summary, invariants checked, then publication -------------------------------------


class DatasetSummary(BaseModel):
    dataset: str
    source: str
    run_id: str | None = None
    status: Literal["ok", "failed"] = "ok"
    errors: list[str] = Field(default_factory=list)  # for the data owner: may quote the files
    error_type: str | None = None  # a fixed category, safe to log
    as_of: str | None = None
    model_version: str | None = None
    parts: int = 0
    shards: int = 0
    rows_in: int = 0
    rows_used: int = 0
    rows_rejected: int = 0
    customers_scored: int = 0
    customers_at_or_above_promotion: int = 0
    customers_queued: int = 0
    customers_held_out: int = 0
    monitoring_sample: int = 0
    promotion_failures: int = 0
    outputs: list[str] = Field(default_factory=list)  # the scored Parquet objects published
    rejects: str | None = None  # the one rejects object (part, source_row, reason)
    ignored: list[IgnoredObject] = Field(default_factory=list)
    # PSI of every customer scored against the model's training distributions, as a batch file's
    # summary (``dataset_drift``); None unless the dataset is ok.
    drift: dict[str, Any] | None = None


def summarize_dataset(
    plan: DatasetPlan,
    parts: Sequence[PartResult],
    shards: Sequence[ShardResult],
    *,
    memory: MemoryModel = DEFAULT_MEMORY,
    changes: Sequence[str] = (),
    reference: DriftReference | None = None,
) -> DatasetSummary:
    """Aggregate the phases' results and check every dataset-level invariant: a violated one makes
    the summary ``failed`` (and ``finish_dataset`` publish nothing). ``changes``: how the dataset
    differs from its plan now (``dataset_changes``): any fails it. ``reference``: the planned model's
    drift reference; an ok summary gets the drift of all the shards' customers (``dataset_drift``)."""
    shuffle = plan_shards(plan, parts, memory=memory)
    summary = DatasetSummary(
        dataset=plan.dataset,
        source=plan.source,
        run_id=plan.run_id,
        as_of=shuffle.as_of,
        parts=len(plan.parts),
        shards=plan.shards,
        rows_in=sum(p.rows_in for p in parts),
        rows_rejected=sum(p.rows_rejected for p in parts) + sum(s.rows_rejected for s in shards),
        rows_used=sum(s.rows_used for s in shards),
        customers_scored=sum(s.customers_scored for s in shards),
        customers_at_or_above_promotion=sum(s.customers_at_or_above_promotion for s in shards),
        customers_queued=sum(s.customers_queued for s in shards),
        customers_held_out=sum(s.customers_held_out for s in shards),
        monitoring_sample=sum(s.monitoring_sample for s in shards),
        promotion_failures=sum(len(s.promotion_failures) for s in shards),
        ignored=plan.ignored,
    )
    versions = sorted({s.model_version for s in shards if s.model_version is not None})
    errors = (
        list(changes) + shuffle.errors + _shard_errors(shuffle, shards, versions) + _count_errors(summary)
    )
    if plan.model_version is not None and versions and versions != [plan.model_version]:
        errors.append(f"shards scored by {versions}, the run was planned with {plan.model_version}")
    if errors:
        kind = "DatasetChanged" if changes else "PartFailed" if shuffle.errors else "InvariantViolated"
        return summary.model_copy(update={"status": "failed", "errors": errors, "error_type": kind})
    return summary.model_copy(
        update={"model_version": versions[0] if versions else None, "drift": dataset_drift(reference, shards)}
    )


def dataset_drift(reference: DriftReference | None, shards: Sequence[ShardResult]) -> dict[str, Any]:
    """The dataset's ``drift`` section (``churnguard.drift.drift_summary``): the PSI of every ok
    shard's bin counts merged, against ``reference`` (the planned model's). Counts that are not over
    the reference's bins (a shard scored without counts, by another release) are left out: the
    section's ``customers`` says how many were compared."""
    if reference is None:
        return drift_summary(None, None)
    merged = reference.counts()
    for shard in shards:
        if shard.status != "ok" or shard.drift_counts is None:
            continue
        counts = DriftCounts.from_dict(shard.drift_counts)
        if _fits(reference, counts):
            merged = merged.merge(counts)
    return drift_summary(reference, merged)


def _fits(reference: DriftReference, counts: DriftCounts) -> bool:
    return len(counts.score) == reference.score.n_bins and [len(c) for c in counts.features] == [
        f.binned.n_bins for f in reference.features
    ]


def _shard_errors(shuffle: Shuffle, shards: Sequence[ShardResult], versions: list[str]) -> list[str]:
    """Each planned shard scored once, ok, as planned: the rows phase 1 wrote for it, a customer
    count within what the parts saw, the dataset's as-of, one model version for all."""
    got = [s.shard for s in shards]
    errors = [
        f"shard {t.shard}: {got.count(t.shard)} results" for t in shuffle.tasks if got.count(t.shard) != 1
    ]
    errors += [f"shard {s}: not planned" for s in sorted(set(got) - {t.shard for t in shuffle.tasks})]
    errors += [f"shard {s.shard} failed: {s.error}" for s in shards if s.status != "ok"]
    tasks = {t.shard: t for t in shuffle.tasks}
    for s in (s for s in shards if s.status == "ok" and s.shard in tasks):
        task = tasks[s.shard]
        if s.rows_in != task.rows or s.rows_used != task.rows:
            errors.append(f"shard {s.shard}: used {s.rows_used:,} of {task.rows:,} rows written for it")
        if not task.customers_at_least <= s.customers_scored <= task.customers_at_most:
            errors.append(f"shard {s.shard}: {s.customers_scored:,} customers scored, outside what parts saw")
        if s.as_of is None or not s.as_of.startswith(task.as_of):
            errors.append(f"shard {s.shard}: scored as of {s.as_of}, the dataset is as of {task.as_of}")
    if len(versions) > 1:
        errors.append(f"shards scored by different model versions: {versions}")
    return errors


def _count_errors(summary: DatasetSummary) -> list[str]:
    errors = []
    if summary.rows_in != summary.rows_used + summary.rows_rejected:
        errors.append(
            f"rows in ({summary.rows_in:,}) != used ({summary.rows_used:,}) + rejected "
            f"({summary.rows_rejected:,})"
        )
    if not summary.customers_queued <= summary.customers_at_or_above_promotion <= summary.customers_scored:
        errors.append("more promotions than customers at or above the threshold, or than customers")
    return errors


def finish_dataset(
    store: ObjectStore,
    plan: DatasetPlan,
    parts: Sequence[PartResult],
    shards: Sequence[ShardResult],
    *,
    memory: MemoryModel = DEFAULT_MEMORY,
    tmp_dir: str | None = None,
    changes: DatasetChanges | None = None,
    reference: DriftReference | None = None,
) -> DatasetSummary:
    """The summary step: check, then publish the outputs (ok only) and write the summary last.
    A run superseded by a newer one (``DatasetChanges.superseded``) writes its failed summary in
    its work area only (``superseded_summary_key``): the newer run writes the dataset's.
    ``reference``: the planned model's drift reference (the summary's ``drift``)."""
    changes = changes or DatasetChanges()
    summary = summarize_dataset(
        plan, parts, shards, memory=memory, changes=changes.errors, reference=reference
    )
    if changes.superseded:
        _put_summary(store, plan.bucket, superseded_summary_key(plan), summary)
        return summary
    if summary.status == "ok":
        outputs = []
        for shard in sorted((s for s in shards if s.scored_key), key=lambda s: s.shard):
            store.copy(plan.bucket, str(shard.scored_key), plan.output_key(shard.shard))
            outputs.append(plan.output_key(shard.shard))
        _publish_rejects(store, plan, parts, tmp_dir)
        summary = summary.model_copy(update={"outputs": outputs, "rejects": plan.rejects_key})
    _put_summary(store, plan.bucket, plan.summary_key, summary)
    if summary.status == "ok":
        _remove_earlier_outputs(store, plan)
    return summary


def _remove_earlier_outputs(store: ObjectStore, plan: DatasetPlan) -> None:
    """Once the summary names this run's outputs, what earlier runs published under the dataset goes
    (their folders, and the flat outputs of releases before run folders): a re-run with fewer shards
    leaves no stale part beside the current ones. A failed run removes nothing: the previous outputs
    stay until an ok run replaces them, and its failed summary says not to use them."""
    dataset_prefix = f"{SCORED_PREFIX}{plan.dataset}/"
    earlier = [
        o.key
        for o in store.list_objects(plan.bucket, dataset_prefix)
        if not o.key.startswith(plan.output_prefix) and o.key != plan.summary_key
    ]
    if earlier:
        store.delete(plan.bucket, earlier)


def _publish_rejects(
    store: ObjectStore, plan: DatasetPlan, parts: Sequence[PartResult], tmp_dir: str | None
) -> None:
    """The parts' rejects as one CSV (header once, in part order), streamed through a local file."""
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        path = Path(tmp) / "rejects.csv"
        with path.open("wb") as out:
            out.write(b"part,source_row,reason\n")
            for part in sorted((p for p in parts if p.rows_rejected), key=lambda p: p.part):
                body = store.open(plan.bucket, plan.part_rejects_key(part.part))
                body.read(len(b"part,source_row,reason\n"))  # its own header
                shutil.copyfileobj(body, out, length=8 * 1024**2)
        store.upload_file(path, plan.bucket, plan.rejects_key, content_type="text/csv")


def fail_dataset(
    store: ObjectStore,
    bucket: str,
    dataset: str,
    error: Exception,
    *,
    incoming_prefix: str = INCOMING_PREFIX,
) -> DatasetSummary:
    """The failed summary of a dataset that could not be planned (``DatasetError``)."""
    summary = DatasetSummary(
        dataset=dataset,
        source=f"s3://{bucket}/{incoming_prefix}{dataset}/",
        status="failed",
        errors=[str(error)],
        error_type=type(error).__name__,
    )
    _put_summary(store, bucket, summary_key(dataset), summary)
    return summary


def _put_summary(store: ObjectStore, bucket: str, key: str, summary: DatasetSummary) -> None:
    body = summary.model_dump_json(indent=2).encode()
    store.put_bytes(bucket, key, body, content_type="application/json")
