"""The pipeline's exceptions. Every message names the file, batch or key involved."""


class PipelineError(Exception):
    """Base class for every error the pipeline reports to its user."""


class ConfigError(PipelineError):
    """params.yaml (or a command-line value) is missing, malformed or impossible."""


class DataValidationError(PipelineError):
    """A batch file failed validation; the batch is rejected and quarantined."""

    def __init__(self, batch_number: int, file: str, problem: str) -> None:
        self.batch_number = batch_number
        self.file = file
        self.problem = problem
        super().__init__(f"batch {batch_number} rejected: {file}: {problem}")


class StateError(PipelineError):
    """batch_state.json is unreadable or inconsistent, or a batch may not be (re)run."""


class TrackingError(PipelineError):
    """The MLflow tracking server or registry could not be reached or refused a call."""


class VersioningError(PipelineError):
    """DVC could not initialise the repository or track a file."""
