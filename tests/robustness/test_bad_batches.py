"""Every kind of malformed landing file is rejected with a clear one-line reason, quarantined,
and leaves the champion, the training data and the earlier state untouched; the pipeline then
continues with the next good batch. Real CLI processes, real files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from retrain_pipeline.sources import breast_cancer_dataset

RAW = breast_cancer_dataset(seed=3, target_column="target")
GOOD = RAW.iloc[:60]


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _with(column: str, row: int, value: object) -> bytes:
    frame = GOOD.astype({column: object}).copy()
    frame.loc[frame.index[row], column] = value
    return _csv(frame)


def _symlink_outside(path: Path) -> None:
    outside = path.parent.parent / "outside.csv"
    outside.write_bytes(_csv(GOOD))
    path.symlink_to(outside)


# name, how to create batch file (bytes, or a callable given the path), expected fragment
CASES: list[tuple[str, str, bytes | Callable[[Path], None], str]] = [
    ("empty file", "csv", b"", "file is empty"),
    ("header only", "csv", ",".join(GOOD.columns).encode() + b"\n", "no data rows (header only)"),
    ("missing column", "csv", _csv(GOOD.drop(columns=["mean_radius"])), "missing column(s) ['mean_radius']"),
    ("extra column", "csv", _csv(GOOD.assign(surprise=1.0)), "unexpected column(s) ['surprise']"),
    ("renamed target", "csv", _csv(GOOD.rename(columns={"target": "label"})), "missing column(s) ['target']"),
    ("wrong dtype", "csv", _with("mean_area", 4, "large"), "column 'mean_area': wrong type"),
    ("unknown label", "csv", _with("target", 2, 7), "unknown label(s)"),
    ("fractional label", "csv", _with("target", 2, 0.5), "unknown label(s)"),
    (
        "all-NaN column",
        "csv",
        _csv(GOOD.assign(mean_texture=np.nan)),
        "'mean_texture': all values are missing",
    ),
    ("NaN value", "csv", _with("mean_texture", 3, np.nan), "'mean_texture': missing value(s)"),
    ("inf value", "csv", _with("mean_texture", 3, np.inf), "'mean_texture': infinite value(s)"),
    ("huge value", "csv", _with("mean_texture", 3, 1e300), "above data.max_abs_value"),
    (
        "duplicate header",
        "csv",
        _csv(GOOD).replace(b"mean_radius,", b"mean_texture,", 1),
        "duplicate column name(s)",
    ),
    ("semicolon delimiter", "csv", GOOD.to_csv(index=False, sep=";").encode(), "CSV must use ','"),
    ("extra fields", "csv", b"mean_radius,target\n1.0,2.0,1\n", "more fields than the header"),
    ("binary garbage", "csv", bytes(range(256)) * 8, "binary content"),
    ("non-UTF-8 text", "csv", _csv(GOOD).replace(b"mean_radius", b"mean_r\xe9dius", 1), "not valid UTF-8"),
    ("garbage parquet", "parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
    ("a directory", "csv", lambda path: path.mkdir(), "is a directory"),
    ("symlink outside", "csv", _symlink_outside, "symlink points outside the landing folder"),
]


def test_malformed_batches_are_rejected_and_the_pipeline_moves_on(
    tmp_path: Path, run_cli: Callable[..., Any], write_params: Callable[..., Path]
) -> None:
    params = write_params(tmp_path / "project")
    root = params.parent
    landing = root / "data" / "landing"
    landing.mkdir(parents=True)
    (landing / "batch_1.csv").write_bytes(_csv(GOOD))
    first = run_cli("--params", str(params))
    assert first.returncode == 0, first.stderr[-3000:]
    state_before = json.loads((root / "batch_state.json").read_text())
    data_before = (root / "data" / "processed" / "training_data.json.dvc").read_text()

    problems = []
    for offset, (name, suffix, content, expected) in enumerate(CASES):
        number = offset + 2
        path = landing / f"batch_{number}.{suffix}"
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
        result = run_cli("--params", str(params))
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        state = json.loads((root / "batch_state.json").read_text())
        record = state["batches"].get(str(number), {})
        checks = {
            "exit code 1": result.returncode == 1,
            "one-line reason names batch and file": last.startswith(f"error: batch {number} rejected: ")
            and path.name in last,
            f"reason mentions {expected!r}": expected in last,
            "no traceback": "Traceback" not in result.stderr + result.stdout,
            "state says rejected with the reason": record.get("status") == "rejected"
            and expected in (record.get("error") or ""),
            "champion untouched": state["champion_version"] == state_before["champion_version"],
            "accepted batches untouched": state["processed_batches"] == [1],
            "training data untouched": (root / "data/processed/training_data.json.dvc").read_text()
            == data_before,
            "reason file in quarantine": any(
                p.name.startswith(f"batch_{number}.") and p.name.endswith(".reason.txt")
                for p in (root / "data" / "quarantine").iterdir()
            ),
        }
        failed = [check for check, ok in checks.items() if not ok]
        if failed:
            problems.append(f"{name}: failed {failed}; stderr tail: {last!r}")
    assert not problems, "\n".join(problems)

    # Regular rejected files were copied to the quarantine; the escaping symlink was not followed.
    quarantined = {
        p.name.split(".")[0] for p in (root / "data" / "quarantine").iterdir() if "reason" not in p.name
    }
    assert "batch_2" in quarantined and f"batch_{len(CASES) + 1}" not in quarantined

    good_number = len(CASES) + 2
    (landing / f"batch_{good_number}.csv").write_bytes(_csv(RAW.iloc[60:120]))
    final = run_cli("--params", str(params))
    assert final.returncode == 0, final.stderr[-3000:]
    state = json.loads((root / "batch_state.json").read_text())
    assert state["processed_batches"] == [1, good_number]
    assert state["batches"][str(good_number)]["training_rows_total"] == 120


def test_a_first_batch_with_one_class_is_rejected(
    tmp_path: Path, run_cli: Callable[..., Any], write_params: Callable[..., Path]
) -> None:
    params = write_params(tmp_path / "project")
    landing = params.parent / "data" / "landing"
    landing.mkdir(parents=True)
    GOOD[GOOD["target"] == 1].to_csv(landing / "batch_1.csv", index=False)

    result = run_cli("--params", str(params))

    assert result.returncode == 1
    assert "would lack class(es) [0]" in result.stderr.strip().splitlines()[-1]
    state = json.loads((params.parent / "batch_state.json").read_text())
    assert state["batches"]["1"]["status"] == "rejected"
    assert state["processed_batches"] == [] and state["champion_version"] is None


def test_debug_flag_shows_the_traceback(
    tmp_path: Path, run_cli: Callable[..., Any], write_params: Callable[..., Path]
) -> None:
    params = write_params(tmp_path / "project")
    landing = params.parent / "data" / "landing"
    landing.mkdir(parents=True)
    (landing / "batch_1.csv").write_bytes(b"")

    quiet = run_cli("--params", str(params))
    loud = run_cli("1", "--params", str(params), "--debug")

    assert "Traceback" not in quiet.stderr
    assert loud.returncode == 1 and "Traceback" in loud.stderr
    assert yaml.safe_load((params.parent / "batch_state.json").read_text())["batches"]["1"]["attempts"] == 2
