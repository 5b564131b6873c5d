"""Project set-up: folders, the DVC repository, the demo's raw data. Idempotent."""

from __future__ import annotations

import logging

from retrain_pipeline import versioning
from retrain_pipeline.config import Settings
from retrain_pipeline.fileio import write_csv_atomic
from retrain_pipeline.sources import breast_cancer_dataset

logger = logging.getLogger(__name__)


def prepare_project(settings: Settings) -> None:
    """Create the output folders, ``dvc init`` once, and write the raw data for ``sliced``.

    With ``stores.dvc_remote`` set, that remote becomes the DVC repository's default remote
    (``shared``, in the uncommitted ``.dvc/config.local``; updated when the URL changes).
    The raw file is written only when absent: raw data is immutable.
    """
    for folder in (
        settings.data.landing_dir,
        settings.processed_batches_dir,
        settings.data.quarantine_dir,
        settings.paths.models_dir,
        settings.paths.metrics_dir,
        settings.paths.state_file.parent,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    versioning.ensure_repo(settings.root)
    if settings.stores.dvc_remote is not None:
        versioning.use_remote(settings.root, settings.stores.dvc_remote)
    raw_file = settings.data.raw_file
    if settings.data.source == "sliced" and not raw_file.exists():
        frame = breast_cancer_dataset(settings.data.shuffle_seed, settings.data.target_column)
        write_csv_atomic(frame, raw_file)
        logger.info("Wrote %d rows of raw data to %s", len(frame), raw_file)
