"""Parquet -> CSV in a child process, so an untrusted file cannot take the function down.

fastparquet's compiled decoder segfaults on a Parquet file whose data pages are corrupt (footer
intact), and random bytes named ``.parquet`` can make it allocate without bound (24 GB before the OOM
killer, measured). In Lambda that kills the invocation before any summary is written. So batch scoring
never decodes Parquet in its own process: ``convert`` runs this module as a child with an
address-space limit and a timeout; the child writes the rows as CSV (text, typed again by the one
validation path), and a crash, the limit or the timeout becomes an ``EventLogError`` naming it.

A file whose footer declares more rows than the caller can hold is refused before any data page is
decoded (``ParquetTooManyRowsError`` carries the count, so the caller can split it).

    python -m churnguard.parquet_reader SRC.parquet DST.csv MEMORY_MB MAX_ROWS    # what the child runs
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_MEMORY_MB = 2048
DEFAULT_TIMEOUT_S = 600


TOO_MANY_ROWS_EXIT = 4


class ParquetReadError(ValueError):
    """The file could not be converted; the message says why (no file contents in it)."""


class ParquetTooManyRowsError(ParquetReadError):
    def __init__(self, rows: int, max_rows: int) -> None:
        super().__init__(f"its footer declares {rows:,} rows, more than the {max_rows:,} allowed")
        self.rows = rows


def convert(
    source: Path,
    target: Path,
    *,
    memory_mb: int = DEFAULT_MEMORY_MB,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int | None = None,
) -> None:
    """Write ``source``'s rows to ``target`` (CSV with a header) using a limited child process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        # BLAS thread pools reserve address space per thread; one thread keeps the limit for the data
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "churnguard.parquet_reader",
                str(source),
                str(target),
                str(memory_mb),
                str(max_rows if max_rows is not None else -1),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise ParquetReadError(f"reading it took longer than {timeout_s:.0f} s") from exc
    if result.returncode == 0:
        return
    if result.returncode == TOO_MANY_ROWS_EXIT and max_rows is not None:
        raise ParquetTooManyRowsError(int(result.stderr.split()[-1]), max_rows)
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        raise ParquetReadError(f"the Parquet decoder crashed ({name}) on it")
    reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
    if "MemoryError" in reason:
        reason = f"decoding it needed more than {memory_mb} MB (a corrupt file, or row groups too large)"
    raise ParquetReadError(reason[:500])


def _iso(column: pd.Series) -> pd.Series:
    """Datetimes as ISO-8601 text, which validation parses like any CSV value."""
    import pandas as pd

    text: pd.Series
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        text = column.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    elif pd.api.types.is_datetime64_any_dtype(column):
        text = column.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    else:
        text = column
    return text


def _main(source: str, target: str, memory_mb: int, max_rows: int) -> int:
    # The limits are set here, first thing, not with preexec_fn (unsafe in a threaded parent).
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 1024**2, memory_mb * 1024**2))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    import fastparquet

    try:
        parquet = fastparquet.ParquetFile(source)
        rows = parquet.count()
        if 0 <= max_rows < rows:
            print(f"rows {rows}", file=sys.stderr)
            return TOO_MANY_ROWS_EXIT
        header = True
        for group in parquet.iter_row_groups():  # one row group at a time bounds memory
            frame = group.apply(_iso)
            frame.to_csv(target, mode="w" if header else "a", header=header, index=False)
            header = False
        if header:  # no row group at all: still a file with the columns
            import pandas as pd

            pd.DataFrame(columns=parquet.columns).to_csv(target, index=False)
    except MemoryError:
        print("MemoryError", file=sys.stderr)
        return 3
    except Exception as exc:  # fastparquet raises assorted errors on non-Parquet bytes
        print(f"{type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
