"""Operator CLI pieces: argument validation and the status table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from retrain_pipeline.cli import host_argument, main, port_argument, render_status, status_payload
from retrain_pipeline.params import settings_from_mapping
from retrain_pipeline.state import BatchRecord, PipelineState


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "0.0.0.0", "my-host.example"])
def test_valid_hosts(host: str) -> None:
    assert host_argument(host) == host


@pytest.mark.parametrize("host", ["", "-rf", "a b", "host;rm -rf /", "$(id)", "x" * 300])
def test_invalid_hosts_are_refused(host: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a valid host"):
        host_argument(host)


@pytest.mark.parametrize("port", ["0", "65536", "-1", "abc", "80.5", ""])
def test_invalid_ports_are_refused(port: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="between 1 and 65535"):
        port_argument(port)


def test_port_in_range() -> None:
    assert port_argument("5000") == 5000


def _state() -> PipelineState:
    done = BatchRecord(
        status="completed",
        started_at="s",
        finished_at="2026-11-23T10:00:00+00:00",
        rows=50,
        training_rows_total=50,
        metrics={"f1": 0.91234},
        promoted=True,
        model_version="1",
    )
    bad = BatchRecord(
        status="rejected", started_at="s", finished_at="f", error="batch 2 rejected: x.csv: empty"
    )
    return PipelineState().with_batch(1, done, "1").with_batch(2, bad, "1")


def test_status_table_shows_batches_champion_and_next(tmp_path: Path) -> None:
    settings = settings_from_mapping({"automation": {"max_batches": 3}}, tmp_path)
    text = render_status(status_payload(settings, _state()))
    lines = text.splitlines()
    assert lines[0].split() == [
        "batch",
        "status",
        "rows",
        "train+holdout",
        "f1",
        "champion",
        "f1",
        "promoted",
        "version",
        "drift",
        "champion",
        "f1",
        "on",
        "batch",
        "finished",
        "at",
    ]
    # A record from before monitoring: no drift section ("-").
    assert lines[2].split()[:10] == ["1", "completed", "50", "50", "0.9123", "-", "yes", "1", "-", "-"]
    assert "batch 2 rejected: batch 2 rejected: x.csv: empty" in text
    assert "champion: model version 1" in text
    assert "next batch: 3" in text


def test_status_when_all_done_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_from_mapping({"automation": {"max_batches": 2}}, tmp_path)
    payload = status_payload(settings, _state())
    assert payload["next_batch"] is None
    assert "next batch: none (all 2 batches done)" in render_status(payload)

    params = tmp_path / "params.yaml"
    params.write_text("automation: {max_batches: 2}\n")
    assert main(["status", "--json", "--params", str(params)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["batches"] == {} and printed["next_batch"] == 1


def test_cli_reports_a_bad_params_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("data: {batch_size: -5}\n")
    assert main(["status", "--params", str(params)]) == 1
    assert "data.batch_size" in capsys.readouterr().err
