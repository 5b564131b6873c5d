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


class PostgresError(PipelineError):
    """The local PostgreSQL server could not be set up, started or stopped."""


class ClusterError(PipelineError):
    """The local cluster could not be started or stopped."""


class TemporaryApiTimeoutError(RuntimeError):
    """The temporary API server did not answer within ``waited_s`` seconds, or ``exit_code``
    says that its process ended first."""

    def __init__(self, waited_s: float, detail: str, exit_code: int | None = None) -> None:
        super().__init__(f"Prefect's temporary API server did not answer within {waited_s:g} s: {detail}")
        self.waited_s = waited_s
        self.exit_code = exit_code


class ServiceError(PipelineError):
    """A service did not start or stop."""


class PipelineBusyError(StateError):
    """Another run holds the pipeline lock."""


class DeploymentError(PipelineError):
    """The Prefect API refused or cannot be reached."""


class ScoringError(PipelineError):
    """A model cannot score the given input (a missing column, a wrong type, an unreadable
    file) or the model to score with cannot be found or loaded."""
