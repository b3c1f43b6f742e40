"""Wait answers: checked against the wait's JSON Schema (strictly) before anything is written,
stored as JSON, typed again by the flow; stored schema text is never evaluated."""

from __future__ import annotations

import datetime
import decimal
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, Field

import kitaru
from kitaru import KitaruClient
from kitaru._engine.waits import _class_resolver, _Unbuildable, build_type, type_ref
from kitaru.cli import main
from kitaru.store import JournalRecord


class Order(BaseModel):
    item: str
    price: decimal.Decimal
    due: datetime.date


@kitaru.flow
def approve_flow() -> str:
    return "shipped" if kitaru.wait(name="approve", schema=bool) else "held"


@kitaru.flow
def count_flow() -> int:
    return int(kitaru.wait(name="count", schema=Annotated[int, Field(gt=0)])) * 2


@kitaru.flow
def date_flow() -> str:
    day = kitaru.wait(name="day", schema=datetime.date)
    return f"{type(day).__name__}:{day.isoformat()}"


@kitaru.checkpoint
def describe(order: Order) -> str:
    assert isinstance(order, Order)
    return f"{order.item}:{order.price!r}:{order.due!r}"


@kitaru.flow
def order_flow() -> str:
    return describe(kitaru.wait(name="order", schema=Order))


@kitaru.flow
def open_flow() -> Any:
    return kitaru.wait(name="anything")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def journal_of(exec_id: str) -> list[JournalRecord]:
    return list(KitaruClient()._runtime.state.read_journal(exec_id))


class TestStrictAnswers:
    @pytest.mark.parametrize("answer", ['"no"', '"false"', "0", '"true"'])
    def test_text_or_number_is_not_a_bool(self, answer: str) -> None:
        handle = approve_flow.run()
        before = journal_of(handle.exec_id)
        code, _, err = run("executions", "input", handle.exec_id, "--value", answer)
        assert code == 8 and "expected bool" in err and "still open" in err, err
        assert journal_of(handle.exec_id) == before
        code, out, _ = run("executions", "input", handle.exec_id, "--value", "false")
        assert code == 0 and "completed" in out
        assert handle.wait() == "held"

    @pytest.mark.parametrize("answer", ['"3"', "3.0", "0", "true"])
    def test_text_float_or_out_of_range_is_not_a_positive_int(self, answer: str) -> None:
        handle = count_flow.run()
        before = journal_of(handle.exec_id)
        code, _, err = run("executions", "input", handle.exec_id, "--value", answer)
        assert code == 8 and "still open" in err, err
        assert journal_of(handle.exec_id) == before
        assert KitaruClient().executions.input(handle.exec_id, 3).wait() == 6

    def test_iso_date_string_is_a_date(self) -> None:
        handle = date_flow.run()
        for bad in ('"2026-02-30"', '"31/01/2026"', "20260131"):
            code, _, err = run("executions", "input", handle.exec_id, "--value", bad)
            assert code == 8 and "still open" in err, (bad, err)
        code, out, _ = run("executions", "input", handle.exec_id, "--value", '"2026-01-31"')
        assert code == 0 and "completed" in out
        assert handle.wait() == "date:2026-01-31"

    def test_python_values_are_stored_as_json_and_typed_again(self) -> None:
        handle = order_flow.run()
        client = KitaruClient()
        answer = Order(item="tea", price=decimal.Decimal("1.50"), due=datetime.date(2026, 1, 31))
        assert client.executions.input(handle.exec_id, answer).wait() == (
            "tea:Decimal('1.50'):datetime.date(2026, 1, 31)"
        )
        [record] = [r for r in journal_of(handle.exec_id) if r.kind == "wait_answered"]
        artifact = client.artifacts.get(record.artifact_id or "")
        assert artifact.serializer == "json"
        assert artifact.load() == {"item": "tea", "price": "1.50", "due": "2026-01-31"}

    def test_get_shows_what_an_open_wait_expects(self) -> None:
        handle = order_flow.run()
        code, out, _ = run("executions", "get", handle.exec_id)
        assert code == 0 and "Order" in out
        code, out, _ = run("executions", "get", handle.exec_id, "-o", "json")
        [w] = json.loads(out)["waits"]
        assert w["schema"] == "Order" and w["json_schema"]["title"] == "Order"
        assert w["type_ref"] == {"class": f"{__name__}:Order"}


class TestNoEvalOfStoredText:
    def _rewrite_wait(self, kitaru_home: Path, exec_id: str, data: dict[str, Any]) -> None:
        """Make the wait record look like one an older kitaru wrote, with a text reference."""
        with sqlite3.connect(kitaru_home / "kitaru.db") as db:
            db.execute(
                "UPDATE journal SET data = ? WHERE exec_id = ? AND kind = 'wait_opened'",
                (json.dumps(data), exec_id),
            )

    def test_a_stored_expression_is_never_evaluated(self, kitaru_home: Path, tmp_path: Path) -> None:
        handle = open_flow.run()
        marker = tmp_path / "evaluated"
        expression = f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned') and bool"
        self._rewrite_wait(
            kitaru_home,
            handle.exec_id,
            {
                "question": None,
                "schema": f"expr:{expression}",
                "schema_text": "bool",
                "metadata": {},
                "deadline": None,
                "json_schema": {"type": "boolean"},
            },
        )
        code, _, err = run("executions", "input", handle.exec_id, "--value", '"yes"', "--no-resume")
        assert code == 8 and "expected bool" in err, err
        code, _, err = run("executions", "input", handle.exec_id, "--value", "true")
        assert code == 0, err
        assert not marker.exists()
        assert KitaruClient().executions.get(handle.exec_id).status == "completed"

    def test_an_old_class_reference_is_read_as_a_name(self, kitaru_home: Path) -> None:
        handle = open_flow.run()
        self._rewrite_wait(
            kitaru_home,
            handle.exec_id,
            {
                "question": None,
                "schema": f"type:{__name__}:Order",
                "schema_text": "Order",
                "metadata": {},
                "deadline": None,
                "json_schema": Order.model_json_schema(),
            },
        )
        bad = {"item": "tea", "price": "1.5", "due": "2026-01-32"}
        code, _, err = run("executions", "input", handle.exec_id, "--value", json.dumps(bad))
        assert code == 8 and "due" in err and "still open" in err, err
        good = {"item": "tea", "price": "1.5", "due": "2026-01-31"}
        code, _, err = run("executions", "input", handle.exec_id, "--value", json.dumps(good))
        assert code == 0, err
        assert KitaruClient().executions.get(handle.exec_id).status == "completed"

    def test_no_eval_or_exec_in_the_package(self) -> None:
        root = Path(kitaru.__file__).parent
        offenders = [
            f"{path.relative_to(root)}:{n}"
            for path in root.rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if ("eval(" in line or "exec(" in line) and "exec_module(" not in line
        ]
        assert offenders == []


class TestDeepJson:
    DEEP = "[" * 50_000 + "]" * 50_000

    def test_a_deeply_nested_answer_is_a_usage_error(self) -> None:
        handle = open_flow.run()
        before = journal_of(handle.exec_id)
        code, _, err = run("executions", "input", handle.exec_id, "--value", self.DEEP)
        assert code == 2 and "--value" in err and "levels deep" in err, err
        assert "Traceback" not in err and journal_of(handle.exec_id) == before

    def test_a_deeply_nested_override_is_a_usage_error(self) -> None:
        handle = approve_flow.run()
        KitaruClient().executions.input(handle.exec_id, True).wait()
        before = KitaruClient().executions.list()
        code, _, err = run(
            "executions", "replay", handle.exec_id, "--from", "approve", "--override", f"x={self.DEEP}"
        )
        assert code == 2 and "--override" in err and "levels deep" in err, err
        assert KitaruClient().executions.list() == before

    def test_a_deeply_nested_python_value_is_refused(self) -> None:
        handle = open_flow.run()
        value: list[Any] = []
        for _ in range(500):
            value = [value]
        with pytest.raises(kitaru.KitaruWaitValidationError, match="levels deep"):
            KitaruClient().executions.input(handle.exec_id, value)
        assert KitaruClient().executions.get(handle.exec_id).open_waits


class TestReplayOverrides:
    def test_a_wait_override_is_checked_like_an_answer(self) -> None:
        handle = order_flow.run()
        client = KitaruClient()
        client.executions.input(handle.exec_id, {"item": "tea", "price": "1.5", "due": "2026-01-31"}).wait()
        before = client.executions.list()
        for bad in ('{"item": "tea", "price": "1.5", "due": "tomorrow"}', '"yes"'):
            code, _, err = run(
                "executions", "replay", handle.exec_id, "--from", "describe", "--override", f"order={bad}"
            )
            assert code == 8 and "override of wait 'order'" in err, err
        assert client.executions.list() == before
        good = '{"item": "cake", "price": 2, "due": "2026-02-01"}'
        code, out, err = run(
            "executions", "replay", handle.exec_id, "--from", "describe", "--override", f"order={good}"
        )
        assert code == 0 and "completed" in out, err
        replayed = client.executions.list(limit=1)[0]
        result = client.artifacts.get(client.executions.get(replayed.id).result_artifact or "")
        assert result.load() == "cake:Decimal('2'):datetime.date(2026, 2, 1)"


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]


class TestTypeReference:
    @pytest.mark.parametrize(
        "schema",
        [
            bool,
            list[Order],
            Order | None,
            list[decimal.Decimal],
            dict[str, list[Order]] | None,
            tuple[int, ...],
            tuple[int, str],
            frozenset[str],
            Literal["yes", "no", 3, None],
            Sequence[int],
            Page[Order],
            Any,
        ],
        ids=repr,
    )
    def test_a_schema_is_rebuilt_from_its_json_tree(self, schema: Any) -> None:
        tree = json.loads(json.dumps(type_ref(schema)))  # it is stored as JSON
        assert build_type(tree, _class_resolver(None)) == schema

    def test_annotated_metadata_is_for_display_and_its_type_is_rebuilt(self) -> None:
        tree = type_ref(Annotated[int, Field(gt=0)])
        assert tree["origin"] == "Annotated" and "gt=0" in tree["metadata"][0]
        assert build_type(json.loads(json.dumps(tree)), _class_resolver(None)) is int

    def test_a_reference_to_something_not_a_class_is_not_rebuilt(self) -> None:
        for path in ("os:system", "builtins:print", "nowhere_at_all:Thing", "__main__:Order"):
            with pytest.raises(_Unbuildable):
                build_type({"class": path}, _class_resolver(None))


class TestAnswerLimits:
    """The edges of what an answer may be: as deep as the limit (not one level more), finite."""

    def test_an_answer_exactly_as_deep_as_the_limit_is_taken(self) -> None:
        from kitaru._engine.wait_schema import MAX_ANSWER_DEPTH

        value: Any = "leaf"
        for _ in range(MAX_ANSWER_DEPTH):
            value = [value]
        assert KitaruClient().executions.input(open_flow.run().exec_id, value).wait(timeout=60) == value
        with pytest.raises(kitaru.KitaruWaitValidationError, match="levels deep"):
            KitaruClient().executions.input(open_flow.run().exec_id, [value])

    @pytest.mark.parametrize("number", [float("nan"), float("inf")])
    def test_nan_and_infinity_are_not_json_and_are_refused(self, number: float) -> None:
        handle = open_flow.run()
        with pytest.raises(kitaru.KitaruWaitValidationError, match="cannot be turned into JSON"):
            KitaruClient().executions.input(handle.exec_id, {"score": number})
        assert KitaruClient().executions.get(handle.exec_id).open_waits  # still open
