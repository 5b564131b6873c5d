"""Where a batch comes from: the bundled demo data or a landing file, read with a clear error.

Landing files are ``batch_<N>.csv`` or ``batch_<N>.parquet``; every problem reading one
(empty, binary, not UTF-8, another delimiter, ragged rows, duplicate columns, unreadable
Parquet) is a DataValidationError naming the batch and the file. No Prefect, MLflow or DVC.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import pyarrow

from retrain_pipeline.errors import DataValidationError

LANDING_SUFFIXES = (".csv", ".parquet")
_SNIFF_BYTES = 64 * 1024


def breast_cancer_dataset(seed: int, target_column: str) -> pd.DataFrame:
    """The bundled scikit-learn breast-cancer data, snake_case columns, shuffled with ``seed``."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: re.sub(r"\W+", "_", str(c)).strip("_").lower())
    frame = frame.rename(columns={"target": target_column})
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def slice_batch(raw: pd.DataFrame, batch_number: int, batch_size: int) -> pd.DataFrame | None:
    """Rows ``(N-1)*batch_size .. N*batch_size-1`` of ``raw``; None when none exist yet."""
    start = (batch_number - 1) * batch_size
    if start >= len(raw):
        return None
    return raw.iloc[start : start + batch_size].reset_index(drop=True)


def find_landing_file(landing_dir: Path, batch_number: int) -> Path | None:
    """The landing file of a batch (``batch_<N>.csv`` or ``.parquet``), or None if absent.

    Raises DataValidationError when both formats exist, when the entry is not a regular
    file, or when it is a symlink that points outside the landing folder.
    """
    candidates = [landing_dir / f"batch_{batch_number}{suffix}" for suffix in LANDING_SUFFIXES]
    present = [path for path in candidates if path.exists() or path.is_symlink()]
    if not present:
        return None
    if len(present) > 1:
        names = " and ".join(path.name for path in present)
        raise DataValidationError(batch_number, str(present[0]), f"ambiguous: both {names} exist")
    path = present[0]
    resolved = path.resolve()
    if not resolved.is_relative_to(landing_dir.resolve()):
        raise DataValidationError(
            batch_number, str(path), f"symlink points outside the landing folder (to {resolved})"
        )
    if not resolved.is_file():
        kind = "a directory" if resolved.is_dir() else "not a regular file"
        raise DataValidationError(batch_number, str(path), f"is {kind}")
    return path


def read_batch_file(path: Path, batch_number: int) -> pd.DataFrame:
    """Read a landing file into a DataFrame, turning every parse problem into a clear error."""
    if path.suffix == ".parquet":
        return _read_parquet(path, batch_number)
    return _read_csv(path, batch_number)


def _read_parquet(path: Path, batch_number: int) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise DataValidationError(batch_number, str(path), f"not a readable Parquet file ({exc})") from exc
    _reject_duplicate_columns([str(c) for c in frame.columns], batch_number, path)
    return frame


def _read_csv(path: Path, batch_number: int) -> pd.DataFrame:
    reject = partial(DataValidationError, batch_number, str(path))
    payload = path.read_bytes()
    if not payload.strip():
        raise reject("file is empty")
    if b"\x00" in payload[:_SNIFF_BYTES]:
        raise reject("binary content (NUL bytes), not CSV text")
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise reject(f"not valid UTF-8 text (byte {payload[exc.start]:#04x} at offset {exc.start})") from exc
    header = next(csv.reader(io.StringIO(text)), [])
    _reject_duplicate_columns(header, batch_number, path)
    if len(header) == 1:
        for delimiter in (";", "\t", "|"):
            if delimiter in header[0]:
                raise reject(f"header has one column and contains {delimiter!r}: CSV must use ','")
    try:
        with warnings.catch_warnings():
            # index_col=False stops pandas from silently turning the first column into the
            # index when rows have more fields than the header; it warns instead: refuse.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), low_memory=False, index_col=False)
    except pd.errors.ParserWarning as exc:
        raise reject("some rows have more fields than the header") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise reject(f"malformed CSV ({' '.join(str(exc).split())})") from exc
    return frame


def _reject_duplicate_columns(columns: Sequence[str], batch_number: int, path: Path) -> None:
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise DataValidationError(batch_number, str(path), f"duplicate column name(s) {duplicates}")
