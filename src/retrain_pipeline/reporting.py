"""Human-readable run reports (plain strings; publishing them is the tasks' job)."""

from __future__ import annotations

from collections.abc import Mapping

from retrain_pipeline.config import METRIC_NAMES
from retrain_pipeline.data import DataSummary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def training_report(
    *,
    batch_number: int,
    metrics: Mapping[str, float | None],
    champion_metrics: Mapping[str, float | None] | None,
    champion_version: str | None,
    new_version: str,
    promoted: bool,
    reason: str,
    primary_metric: str,
    summary: DataSummary,
) -> str:
    """Markdown: metric table (new vs champion), promotion decision and data summary."""
    champion_label = f"champion v{champion_version}" if champion_version else "champion (none)"
    lines = [
        f"# Batch {batch_number}: model v{new_version} {'promoted' if promoted else 'not promoted'}",
        "",
        f"**Decision:** {reason} (primary metric: `{primary_metric}`)",
        "",
        f"| metric | new v{new_version} | {champion_label} |",
        "|---|---|---|",
    ]
    for name in METRIC_NAMES:
        champion_value = champion_metrics.get(name) if champion_metrics else None
        marker = " **(primary)**" if name == primary_metric else ""
        lines.append(f"| {name}{marker} | {_fmt(metrics.get(name))} | {_fmt(champion_value)} |")
    lines += [
        "",
        "## Training data",
        "",
        f"- rows: {summary.rows} (train {summary.train_rows}, holdout {summary.holdout_rows})",
        f"- class counts: {summary.class_counts}",
    ]
    return "\n".join(lines) + "\n"
