"""Real backing services for tests (PostgreSQL, S3, GCS, Azure Blob), started and stopped by
fixtures. Each module starts one service from what this machine has installed; when it is missing,
tests skip with the command that installs it, except in CI (``CI`` set), where they fail."""

from __future__ import annotations

import os

import pytest

__all__ = ["missing"]


def missing(what: str, install: str) -> None:
    """Skip (on a laptop) or fail (in CI) because ``what`` is not installed."""
    message = f"{what} is not installed here; install it with: {install}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must provide every backend: see .ci/run)")
    pytest.skip(message)
