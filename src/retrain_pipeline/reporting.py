"""Human-readable run reports (plain strings; publishing them is the tasks' job)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrain_pipeline.config import METRIC_NAMES
from retrain_pipeline.state import PipelineState

if TYPE_CHECKING:
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


@dataclass(frozen=True)
class MetricPoint:
    """One batch in the metric history."""

    batch: int
    status: str
    value: float | None  # the new model's metric
    champion_before: float | None  # the previous champion on the same holdout
    promoted: bool | None
    model_version: str | None
    champion_on_batch: float | None = None  # the champion before it, scored on the whole new batch

    @property
    def champion_after(self) -> float | None:
        return self.value if self.promoted else self.champion_before

    def as_row(self, metric: str) -> dict[str, object]:
        return {
            "batch": self.batch,
            "status": self.status,
            metric: self.value,
            f"champion {metric} before": self.champion_before,
            "promoted": self.promoted,
            "model_version": self.model_version,
            f"champion {metric} on the new batch": self.champion_on_batch,
        }


def metric_history(state: PipelineState, metric: str) -> list[MetricPoint]:
    """One point per batch: the new model's metric, the champion's, the decision."""
    return [
        MetricPoint(
            batch=int(key),
            status=record.status,
            value=(record.metrics or {}).get(metric),
            champion_before=(record.champion_metrics or {}).get(metric),
            promoted=record.promoted,
            model_version=record.model_version,
            champion_on_batch=record.drift.champion_score_on_batch if record.drift else None,
        )
        for key, record in state.batches.items()
    ]


def render_status(payload: dict[str, Any]) -> str:
    """The status payload as a fixed-width table, each batch's error or skip reason, then the
    recent rollbacks, the champion and the next batch."""
    return "\n".join([*_status_table(payload), *_batch_notes(payload), "", *_status_footer(payload)])


def _status_table(payload: dict[str, Any]) -> list[str]:
    metric = payload["primary_metric"]
    headers = [
        "batch",
        "status",
        "rows",
        "train+holdout",
        metric,
        f"champion {metric}",
        "promoted",
        "version",
        "drift",
        f"champion {metric} on batch",
        "finished at",
    ]
    rows = [
        [
            key,
            b["status"],
            _cell(b["rows"]),
            _cell(b["training_rows_total"]),
            _cell((b["metrics"] or {}).get(metric)),
            _cell((b["champion_metrics"] or {}).get(metric)),
            _cell(b["promoted"]),
            "not trained" if b.get("trained") is False else _cell(b["model_version"]),
            drift_cell(b.get("drift")),
            _cell((b.get("drift") or {}).get("champion_score_on_batch")),
            _cell(b["finished_at"]),
        ]
        for key, b in payload["batches"].items()
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return lines if rows else [*lines, "(no batches processed yet)"]


def _batch_notes(payload: dict[str, Any]) -> list[str]:
    lines = []
    for key, b in payload["batches"].items():
        if b["error"]:
            lines.append(f"batch {key} {b['status']}: {b['error']}")
        elif b.get("trained") is False:
            lines.append(f"batch {key} not trained: {b.get('skip_reason')}")
    return lines


def _status_footer(payload: dict[str, Any]) -> list[str]:
    lines = [
        f"rollback: v{r['from_version']} -> v{r['to_version']} by {r['by']} at {r['at']}: {r['reason']}"
        for r in payload["rollbacks"][-3:]
    ]
    if payload.get("state_file") is None and payload.get("state_store"):
        lines.append(f"state: {payload['state_store']}")
    champion = payload["champion_version"]
    lines.append(f"champion: {'model version ' + champion if champion else 'none yet'}")
    nxt = payload["next_batch"]
    done = f"none (all {payload['max_batches']} batches done)"
    lines.append(f"next batch: {nxt if nxt is not None else done}")
    return lines


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def drift_cell(drift: Mapping[str, Any] | None) -> str:
    """The status table's drift column from a record's ``drift`` section (JSON form):
    ``yes 0.60`` / ``no 0.10`` (dataset drift, drifted share), ``n/a`` when not checked,
    ``-`` before monitoring existed; ``+decay`` when the champion decayed on the batch."""
    if not drift:
        return "-"
    if drift.get("dataset_drift") is None:
        cell = "n/a"
    else:
        cell = f"{'yes' if drift['dataset_drift'] else 'no'} {drift.get('drift_share') or 0:.2f}"
    return cell + (" +decay" if drift.get("decay") else "")


def drift_summary(drift: Mapping[str, Any] | None) -> str:
    """One line for ``lineage``: the drift verdict, the drifted columns and the champion's score."""
    if not drift:
        return "- (recorded before monitoring existed)"
    if drift.get("dataset_drift") is None:
        text = f"not checked ({drift.get('note')})"
    else:
        columns = drift.get("drifted_columns") or []
        names = ", ".join(str(c["column"]) for c in columns[:5]) + (", ..." if len(columns) > 5 else "")
        text = (
            f"{'yes' if drift['dataset_drift'] else 'no'}: {len(columns)} of {drift.get('columns_tested')} "
            f"columns drifted (share {drift.get('drift_share') or 0:.2f}, "
            f"threshold {drift.get('share_threshold')})"
            + (f": {names}" if names else "")
            + f"; reference batches {drift.get('reference_batches')}"
        )
    if drift.get("champion_version") is not None:
        on_batch = drift.get("champion_score_on_batch")
        at_promotion = drift.get("champion_score_at_promotion")
        decay = drift.get("decay")
        text += (
            f"; champion v{drift['champion_version']} {drift.get('metric')} {_fmt(on_batch)} on this batch "
            f"vs {_fmt(at_promotion)} when trained: "
            + ("DECAYED" if decay else "no decay" if decay is False else "decay n/a")
        )
    return text


def import_plotting() -> None:
    """Import matplotlib (about 0.8 s) ahead of the first plot; see the flow's warm start."""
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot


def plot_metric_history(state: PipelineState, metric: str) -> bytes:
    """A PNG of the primary metric per batch: every new model, the champion line, promotions
    marked, the champion's score on each new batch, and the batches that did not complete."""
    import io

    import_plotting()  # the Agg backend: no display; set here, not at import
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    points = metric_history(state, metric)
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    _plot_models(axes, points, metric)
    _plot_champion_on_batches(axes, points, metric)
    _mark_unfinished(axes, points)
    current = state.champion_version
    axes.set_title(
        f"{metric} per batch: new model vs champion (current champion: "
        f"{'v' + current if current else 'none'})",
        fontsize=11,
    )
    axes.set_xlabel("batch")
    axes.set_ylabel(f"{metric} on the holdout")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _plot_models(axes: Any, points: list[MetricPoint], metric: str) -> None:
    """Each new model's score (labelled with its version), the champion's line, promotions."""
    scored = [(p.batch, p.value, p) for p in points if p.value is not None]
    if not scored:
        return
    axes.plot(
        [b for b, _, _ in scored],
        [v for _, v, _ in scored],
        color="#4c72b0",
        marker="o",
        linewidth=1.2,
        label=f"new model's {metric}",
    )
    champion = [(b, p.champion_after) for b, _, p in scored if p.champion_after is not None]
    if champion:
        axes.step(
            [b for b, _ in champion],
            [v for _, v in champion],
            where="post",
            color="#dd8452",
            linewidth=2.2,
            label=f"champion's {metric} (same holdout)",
        )
    promoted = [(b, v) for b, v, p in scored if p.promoted]
    axes.scatter(
        [b for b, _ in promoted],
        [v for _, v in promoted],
        s=140,
        marker="*",
        color="#2ca02c",
        zorder=5,
        label="promoted to champion",
    )
    for batch, value, point in scored:
        axes.annotate(
            f"v{point.model_version}",
            (batch, value),
            textcoords="offset points",
            xytext=(0, 9),
            ha="center",
            fontsize=7,
            color="#555555",
        )


def _plot_champion_on_batches(axes: Any, points: list[MetricPoint], metric: str) -> None:
    """The champion's score on each new batch, before training (monitoring)."""
    on_batch = [(p.batch, p.champion_on_batch) for p in points if p.champion_on_batch is not None]
    if on_batch:
        axes.scatter(
            [b for b, _ in on_batch],
            [v for _, v in on_batch],
            s=45,
            marker="x",
            color="#8172b3",
            zorder=4,
            label=f"champion's {metric} on the new batch",
        )


def _mark_unfinished(axes: Any, points: list[MetricPoint]) -> None:
    unfinished = [p.batch for p in points if p.status != "completed"]
    for batch in unfinished:
        axes.axvline(batch, color="#c44e52", alpha=0.35, linestyle="--", linewidth=1)
    if unfinished:
        axes.plot([], [], color="#c44e52", alpha=0.5, linestyle="--", label="rejected / failed batch")
