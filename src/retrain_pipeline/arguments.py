"""Validators for values given on our command lines (argparse ``type=`` functions).

Kept apart from the commands themselves so that light commands (``services``, ``cluster``)
do not import what the heavy ones need.
"""

from __future__ import annotations

import argparse
import ipaddress
import re

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
