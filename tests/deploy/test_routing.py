"""Canary routing: a weighted tag takes its share of new executions, sticky per key."""

from __future__ import annotations

from kitaru.deployments import route


def test_weight_10_takes_about_10_percent_of_1000_keys() -> None:
    chosen = [route("review", f"key-{n}", 1, [("canary", 2, 10)]) for n in range(1000)]
    canary = sum(1 for tag, version in chosen if (tag, version) == ("canary", 2))
    assert 70 <= canary <= 130, canary
    assert {c for c in chosen if c[0] != "canary"} == {("default", 1)}


def test_the_same_key_always_lands_on_the_same_version() -> None:
    for n in range(200):
        key = f"order-{n}"
        first = route("review", key, 1, [("canary", 2, 30)])
        assert all(route("review", key, 1, [("canary", 2, 30)]) == first for _ in range(3))


def test_weights_0_and_100_and_several_canaries() -> None:
    keys = [f"k{n}" for n in range(500)]
    assert {route("f", k, 1, [("canary", 2, 0)]) for k in keys} == {("default", 1)}
    assert {route("f", k, 1, [("canary", 2, 100)]) for k in keys} == {("canary", 2)}
    split = [route("f", k, 1, [("a", 2, 20), ("b", 3, 30)])[0] for k in keys]
    assert 70 <= split.count("a") <= 130 and 115 <= split.count("b") <= 185


def test_raising_a_weight_keeps_keys_already_on_the_canary() -> None:
    keys = [f"k{n}" for n in range(500)]
    at_10 = {k for k in keys if route("f", k, 1, [("canary", 2, 10)])[0] == "canary"}
    at_25 = {k for k in keys if route("f", k, 1, [("canary", 2, 25)])[0] == "canary"}
    assert at_10 <= at_25
