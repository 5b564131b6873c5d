"""Automated ML retraining pipeline: Prefect orchestration, MLflow tracking, DVC versioning."""

__version__ = "0.1.0"
