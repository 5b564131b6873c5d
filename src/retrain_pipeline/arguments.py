"""Values given on our command lines: their validators (argparse ``type=`` functions), with the
default host and ports of the servers this project starts, each defined once here.

Kept apart from the commands themselves so that light commands (``services``, ``cluster``)
do not import what the heavy ones need.
"""

from __future__ import annotations

import argparse
import ipaddress
import re

#: Servers bind to loopback unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_SERVE_PORT = 5050
#: The largest batch number any command accepts (``automation.max_batches`` too).
MAX_BATCH_NUMBER = 1_000_000

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def host_argument(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.match(text):
            raise argparse.ArgumentTypeError(f"not a valid host name or IP address: {text!r}") from None
    return text


def port_argument(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be an integer between 1 and 65535, got {text!r}")
    return int(text)


def batch_argument(text: str) -> int:
    """A batch number: an integer from 1 to :data:`MAX_BATCH_NUMBER`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch number must be an integer, got {text!r}") from None
    if not 1 <= value <= MAX_BATCH_NUMBER:
        raise argparse.ArgumentTypeError(
            f"batch number must be between 1 and {MAX_BATCH_NUMBER}, got {value}"
        )
    return value
