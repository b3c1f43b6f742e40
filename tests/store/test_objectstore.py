"""The helpers every object-store artifact store shares (kitaru.store.objectstore)."""

from __future__ import annotations

import random

import pytest

from kitaru.errors import KitaruConfigError
from kitaru.store.objectstore import RetryPolicy, option_bool, rechunk, split_uri


@pytest.mark.parametrize("seed", range(20))
def test_rechunk_cuts_exact_pieces_and_keeps_every_byte(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.randint(1, 64)
    chunks = [rng.randbytes(rng.randint(0, 200)) for _ in range(rng.randint(0, 10))]
    pieces = list(rechunk(iter(chunks), size))
    assert b"".join(pieces) == b"".join(chunks)
    assert all(len(p) == size for p in pieces[:-1])
    assert 0 < len(pieces[-1]) <= size or pieces == [b""]
    assert all(type(p) is bytes for p in pieces)


def test_rechunk_copies_mutable_chunks() -> None:
    buffer = bytearray(b"abc")
    out = rechunk(iter([buffer, b"d"]), 8)
    pieces = []
    for piece in out:
        pieces.append(piece)
    buffer[:] = b"xyz"
    assert pieces == [b"abcd"]


def test_retry_policy_retries_transient_errors_a_bounded_number_of_times() -> None:
    policy = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert policy.call(flaky, lambda e: isinstance(e, ConnectionError)) == "ok"
    assert len(calls) == 3

    def always(exc: Exception) -> str:
        calls.append(1)
        raise exc

    calls.clear()
    with pytest.raises(ConnectionResetError):  # still failing after 3 attempts: the last error
        policy.call(lambda: always(ConnectionResetError()), lambda e: True)
    assert len(calls) == 3

    calls.clear()
    with pytest.raises(ValueError):  # not transient: no retry
        policy.call(lambda: always(ValueError("bad")), lambda e: isinstance(e, ConnectionError))
    assert len(calls) == 1


def test_retry_delays_grow_and_stay_capped() -> None:
    policy = RetryPolicy(attempts=10, base_delay=0.1, max_delay=1.0)
    for attempt in range(1, 10):
        cap = min(1.0, 0.1 * 2 ** (attempt - 1))
        assert all(0 <= policy.delay(attempt) <= cap for _ in range(50))


def test_retry_policy_from_options_reads_strings() -> None:
    options = {"retries": "2", "retry_base_delay": "0.5", "retry_max_delay": "3", "other": 1}
    policy = RetryPolicy.from_options(options)
    assert policy == RetryPolicy(attempts=3, base_delay=0.5, max_delay=3.0)
    assert options == {"other": 1}


def test_split_uri() -> None:
    assert split_uri("s3://bucket/a/b/", "s3") == ("bucket", "a/b")
    assert split_uri("gs://bucket", "gs") == ("bucket", "")
    with pytest.raises(KitaruConfigError, match="s3://"):
        split_uri("gs://bucket", "s3")
    with pytest.raises(KitaruConfigError, match="no bucket"):
        split_uri("az:///prefix", "az")


def test_option_bool() -> None:
    assert option_bool("true", "x") is True and option_bool("0", "x") is False and option_bool(True, "x")
    with pytest.raises(KitaruConfigError, match="maybe"):
        option_bool("maybe", "x")
