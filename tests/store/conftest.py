"""The conformance suites live in the package; rewrite their asserts so failures show values."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("kitaru.store.conformance")
