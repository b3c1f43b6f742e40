"""Wait answers: checked against the wait's JSON Schema (strictly) before anything is written,
stored as JSON, typed again by the flow; stored schema text is never evaluated."""

from __future__ import annotations

import datetime
import decimal
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, NewType, Optional, TypeVar

import pytest
from click.testing import CliRunner
from pydantic import AfterValidator, BaseModel, Field, field_validator

import kitaru
from kitaru import KitaruClient
from kitaru._engine.waits import (
    MAX_ANSWER_DEPTH,
    _class_resolver,
    _Unbuildable,
    build_type,
    describe_schema,
    type_ref,
)
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
                "schema": f"type:{__name__}:Shipment",
                "schema_text": "Shipment",
                "metadata": {},
                "deadline": None,
                "json_schema": Shipment.model_json_schema(),
            },
        )
        # The JSON Schema takes a blank name; the class the reference names refuses it.
        bad = {"name": "  ", "qty": 2}
        code, _, err = run("executions", "input", handle.exec_id, "--value", json.dumps(bad))
        assert code == 8 and "name is blank" in err and "still open" in err, err
        good = {"name": "tea", "qty": 2}
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


def _must_be_even(value: int) -> int:
    if value % 2:
        raise ValueError("must be even")
    return value


class Shipment(BaseModel):
    """A model whose validators the JSON Schema cannot express: only pydantic refuses these."""

    name: str
    qty: int

    @field_validator("name")
    @classmethod
    def _named(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("name is blank")
        return name

    @field_validator("qty")
    @classmethod
    def _even(cls, qty: int) -> int:
        return _must_be_even(qty)

    class Note(BaseModel):
        text: str


@kitaru.flow
def even_flow() -> int:
    return int(kitaru.wait(name="even", schema=Annotated[int, AfterValidator(_must_be_even)]))


@kitaru.flow
def shipments_flow() -> int:
    return len(kitaru.wait(name="shipments", schema=list[Shipment]))


@kitaru.flow
def hinted_flow() -> str:
    # Metadata a UI reads (a dict): the schema cannot be hashed, so pydantic's adapter is not cached.
    return str(kitaru.wait(name="text", schema=Annotated[str, {"widget": "textarea"}]))


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """From then on, answers are given as by a process that did not open the wait (the CLI in
    another directory, a worker): it has no live schema object, only the wait's record (the
    real processes are in tests/e2e/test_wait_answers.py)."""
    return lambda: monkeypatch.setattr("kitaru._engine.waits._LIVE_SCHEMAS", {})


class TestPydanticChecks:
    """What the JSON Schema cannot say (a validator), pydantic checks before the answer is
    recorded: with the live schema where the wait opened, with the type rebuilt from the wait's
    record elsewhere; and the flow checks again on resume, refusing what slipped through."""

    def test_a_validator_refuses_the_answer_where_the_wait_opened(self) -> None:
        handle = even_flow.run()
        before = journal_of(handle.exec_id)
        code, _, err = run("executions", "input", handle.exec_id, "--value", "3")
        assert code == 8 and "the answer 3 for wait 'even'" in err, err
        assert "(value: Value error, must be even)" in err and "still open" in err, err
        assert journal_of(handle.exec_id) == before
        assert KitaruClient().executions.input(handle.exec_id, 4).wait(timeout=60) == 4

    def test_the_rebuilt_type_runs_the_model_s_validators_elsewhere(
        self, elsewhere: Callable[[], None]
    ) -> None:
        handle = shipments_flow.run()
        elsewhere()
        before = journal_of(handle.exec_id)
        bad = [{"name": "cup", "qty": 2}, {"name": "  ", "qty": 3}]
        code, _, err = run("executions", "input", handle.exec_id, "--value", json.dumps(bad))
        assert code == 8 and f"expected list[{__name__}.Shipment]" in err, err
        assert "(1.name: Value error, name is blank; 1.qty: Value error, must be even)" in err, err
        assert journal_of(handle.exec_id) == before
        good = [{"name": "cup", "qty": 2}]
        assert KitaruClient().executions.input(handle.exec_id, good).wait(timeout=60) == 1

    def test_the_classes_of_a_script_run_as_main_are_found_in_the_flow_s_module(
        self, elsewhere: Callable[[], None], kitaru_home: Path
    ) -> None:
        # A flow script run as `python flow.py` names its classes `__main__:...`; a process that
        # loaded the script under another name finds them in that module.
        handle = shipments_flow.run()
        elsewhere()
        with sqlite3.connect(kitaru_home / "kitaru.db") as db:
            [(data,)] = db.execute(
                "SELECT data FROM journal WHERE exec_id = ? AND kind = 'wait_opened'", (handle.exec_id,)
            ).fetchall()
            as_script = {
                **json.loads(data),
                "type": {"origin": "list", "args": [{"class": "__main__:Shipment"}]},
            }
            db.execute(
                "UPDATE journal SET data = ? WHERE exec_id = ? AND kind = 'wait_opened'",
                (json.dumps(as_script), handle.exec_id),
            )
        code, _, err = run("executions", "input", handle.exec_id, "--value", '[{"name": " ", "qty": 2}]')
        assert code == 8 and "name is blank" in err and "still open" in err, err

    def test_an_answer_only_the_flow_can_refuse_fails_it_with_the_replay_that_asks_again(
        self, elsewhere: Callable[[], None]
    ) -> None:
        # The validator is metadata, which is not rebuilt elsewhere: 3 is an int, so it is
        # recorded, and the flow's own check refuses it on resume (never coerced silently).
        handle = even_flow.run()
        elsewhere()
        code, _, err = run("executions", "input", handle.exec_id, "--value", "3")
        assert code == 8, err
        assert f"wait 'even' of execution {handle.exec_id}: its recorded answer 3 does not" in err, err
        assert "flow's schema int, AfterValidator(" in err and "(value: Value error, must be even)" in err
        assert (
            "It passed the wait's JSON Schema when it was given, where the flow's own checks could "
            "not run. Ask again by replaying from the wait:" in " ".join(err.split())
        ), err
        assert f"kitaru executions replay {handle.exec_id} --from even" in err, err
        assert KitaruClient().executions.get(handle.exec_id).status == "failed"

    def test_a_schema_that_cannot_be_hashed_still_checks_answers(self) -> None:
        handle = hinted_flow.run()
        code, _, err = run("executions", "input", handle.exec_id, "--value", "3")
        assert code == 8 and "expected str" in err, err
        assert KitaruClient().executions.input(handle.exec_id, "hello").wait(timeout=60) == "hello"


class TestRefusalMessages:
    """A refused answer's message shows the answer (shortened), where the schema is broken, how
    many more problems there are, and how to answer again."""

    def test_the_first_problem_is_shown_with_its_path_and_a_count_of_the_rest(self) -> None:
        handle = shipments_flow.run()
        bad = [{"name": "cup", "qty": 2}, {"name": "tea", "qty": "two"}, {"name": 5, "qty": 2}]
        code, _, err = run("executions", "input", handle.exec_id, "--value", json.dumps(bad))
        assert code == 8, err
        assert "(2/name: \"5 is not of type 'string'\"; and 1 more)" in err, err
        code, _, err = run("executions", "input", handle.exec_id, "--value", '"nothing"')
        assert code == 8 and """(value: "'nothing' is not of type 'array'").""" in err, err

    def test_a_long_answer_is_shortened_in_the_message(self) -> None:
        handle = approve_flow.run()
        code, _, err = run("executions", "input", handle.exec_id, "--value", json.dumps("y" * 1000))
        assert code == 8, err
        message = " ".join(err.split())  # the terminal wraps long lines
        assert f"the answer '{'y' * 199}... for wait 'approve'" in message, message
        code, _, err = run("executions", "input", handle.exec_id, "--value", json.dumps("y" * 198))
        assert f"the answer '{'y' * 198}' for wait 'approve'" in " ".join(err.split()), err

    def test_an_answer_that_is_not_json_says_why_and_how_to_answer_again(self) -> None:
        handle = open_flow.run()
        with pytest.raises(kitaru.KitaruWaitValidationError) as refused:
            KitaruClient().executions.input(handle.exec_id, {"score": float("nan")})
        message = str(refused.value)
        assert f"the answer for wait 'anything' of execution {handle.exec_id} cannot be" in message
        assert "(ValueError('Out of range float values are not JSON compliant" in message, message
        assert f"answer again with `kitaru executions input {handle.exec_id} --value JSON`" in message

    def test_a_damaged_stored_json_schema_is_a_store_error(self, kitaru_home: Path) -> None:
        handle = approve_flow.run()
        with sqlite3.connect(kitaru_home / "kitaru.db") as db:
            [(data,)] = db.execute(
                "SELECT data FROM journal WHERE exec_id = ? AND kind = 'wait_opened'", (handle.exec_id,)
            ).fetchall()
            damaged = {**json.loads(data), "json_schema": {"type": "yes-or-no"}}
            db.execute(
                "UPDATE journal SET data = ? WHERE exec_id = ? AND kind = 'wait_opened'",
                (json.dumps(damaged), handle.exec_id),
            )
        with pytest.raises(kitaru.KitaruStoreError) as refused:
            KitaruClient().executions.input(handle.exec_id, True, resume=False)
        message = str(refused.value)
        assert "stored JSON Schema cannot be used (UnknownType('yes-or-no'" in message, message
        assert "; the state store holds a damaged wait record. Restore the store, or replay the" in message


class TestDepthOfConvertedValues:
    def test_a_value_that_nests_deeply_only_as_json_is_refused(self) -> None:
        handle = open_flow.run()
        chain = Chain()
        for _ in range(MAX_ANSWER_DEPTH + 5):
            chain = Chain(next=chain)
        with pytest.raises(kitaru.KitaruWaitValidationError, match="levels deep"):
            KitaruClient().executions.input(handle.exec_id, chain)
        assert KitaruClient().executions.get(handle.exec_id).open_waits

    def test_a_deep_answer_beside_a_scalar_is_refused(self) -> None:
        handle = open_flow.run()
        deep: Any = "leaf"
        for _ in range(MAX_ANSWER_DEPTH + 5):
            deep = [deep]
        with pytest.raises(kitaru.KitaruWaitValidationError, match="levels deep"):
            KitaruClient().executions.input(handle.exec_id, {"deep": deep, "note": "x"})
        with pytest.raises(kitaru.KitaruWaitValidationError, match="levels deep"):
            KitaruClient().executions.input(handle.exec_id, [deep, "x"])
        assert KitaruClient().executions.get(handle.exec_id).open_waits


class Chain(BaseModel):
    next: Chain | None = None


UserId = NewType("UserId", int)


class TestTypeReferenceEdges:
    """The stored tree (`executions get -o json` shows it as ``type_ref``; other processes and
    versions read it) and what this process can rebuild from it."""

    @pytest.mark.parametrize(
        ("schema", "tree"),
        [
            (list[int], {"origin": "list", "args": [{"class": "builtins:int"}]}),
            (Literal[1.5], {"opaque": "Literal[1.5]"}),
            (ClassVar[int], {"opaque": "ClassVar[int]"}),
            (UserId, {"opaque": f"{__name__}.UserId"}),
        ],
        ids=repr,
    )
    def test_the_stored_tree(self, schema: Any, tree: dict[str, Any]) -> None:
        assert type_ref(schema) == tree

    def test_a_nested_class_and_the_flow_s_script_classes_are_rebuilt(self) -> None:
        assert build_type(type_ref(Shipment.Note), _class_resolver(None)) is Shipment.Note
        # `__main__` is the flow's script, whichever name this process loaded it under.
        script = sys.modules[__name__]
        assert build_type({"class": "__main__:Order"}, _class_resolver(script)) is Order

    def test_a_module_not_imported_yet_is_imported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delitem(sys.modules, "fractions", raising=False)
        built = build_type({"class": "fractions:Fraction"}, _class_resolver(None))
        assert (built.__module__, built.__qualname__) == ("fractions", "Fraction")

    @pytest.mark.parametrize(
        "tree",
        ["list", {"args": []}, {"origin": "Literal", "values": []}, {"origin": "nowhere", "args": []}],
        ids=repr,
    )
    def test_an_odd_tree_is_not_rebuilt(self, tree: Any) -> None:
        with pytest.raises(_Unbuildable):
            build_type(tree, _class_resolver(None))


@pytest.mark.parametrize(
    ("schema", "shown"),
    [
        (None, "any JSON value"),
        (Any, "any JSON value"),
        (bool, "bool"),
        (Shipment.Note, "Shipment.Note"),
        (Page[Order], "Page[Order]"),
        (int | None, "int | None"),
        (Optional[int], "Optional[int]"),  # noqa: UP045 (how older code spells it)
        (Literal["yes", "no"], "Literal['yes', 'no']"),
        (Annotated[int, Field(gt=0)], "int, Gt(gt=0)"),
        (Annotated[int, Field(gt=0, lt=9)], "int, Gt(gt=0), Lt(lt=9)"),
        (Annotated[str, "a note"], "str, 'a note'"),
        (Annotated[str, Field(description="only words")], "str"),
    ],
    ids=repr,
)
def test_what_a_wait_expects_reads_as_python(schema: Any, shown: str) -> None:
    """The schema as `executions get` and every refusal show it."""
    assert describe_schema(schema) == shown


class TestTheWaitCall:
    """What ``kitaru.wait()`` records, refuses, and does with its deadline and its hold."""

    def test_it_records_its_question_metadata_and_deadline(self) -> None:
        @kitaru.flow
        def ship() -> object:
            return kitaru.wait(question="Ship it?", schema=bool, expires_in=3600, metadata={"ticket": 7})

        before = time.time()
        handle = ship.run()
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert (w.name, w.question, w.schema, w.metadata) == ("wait", "Ship it?", "bool", {"ticket": 7})
        assert w.deadline is not None and before + 3600 <= w.deadline <= time.time() + 3600
        assert w.json_schema == {"type": "boolean"} and w.type_ref == {"class": "builtins:bool"}

    def test_without_a_schema_any_json_value_is_taken(self) -> None:
        handle = open_flow.run()
        [w] = KitaruClient().executions.get(handle.exec_id).open_waits
        assert (w.question, w.schema, w.metadata, w.deadline) == (None, "any JSON value", {}, None)
        assert w.json_schema is None and w.type_ref is None
        answer = {"any": ["json", 1, None]}
        assert KitaruClient().executions.input(handle.exec_id, answer).wait(timeout=60) == answer

    @pytest.mark.parametrize(
        ("kwargs", "why"),
        [
            ({"name": ""}, "wait name '' must be non-empty, without ':' or '/'"),
            ({"name": "a:b"}, "wait name 'a:b' must be"),
            ({"name": "a/b"}, "wait name 'a/b' must be"),
            ({"expires_in": 0}, "wait expires_in= (its deadline) must be positive seconds, got 0."),
            ({"timeout": -1.5}, "got -1.5"),
            ({"schema": object()}, "is not a type pydantic can validate"),
        ],
        ids=repr,
    )
    def test_a_bad_call_is_a_usage_error_and_records_nothing(self, kwargs: dict[str, Any], why: str) -> None:
        @kitaru.flow
        def bad() -> object:
            return kitaru.wait(**kwargs)

        with pytest.raises(kitaru.KitaruUsageError) as refused:
            bad.run().wait(timeout=60)
        assert why in str(refused.value)
        [execution] = KitaruClient().executions.list()
        assert execution.status == "failed"
        assert not [r for r in journal_of(execution.id) if r.kind == "wait_opened"]

    def test_a_positive_timeout_and_a_named_wait_are_taken(self) -> None:
        @kitaru.flow
        def named() -> object:
            return kitaru.wait(name="w-1.ok", expires_in=0.5e4)

        handle = named.run()
        assert [w.name for w in KitaruClient().executions.get(handle.exec_id).open_waits] == ["w-1.ok"]

    def test_inside_a_checkpoint_it_is_an_error(self) -> None:
        @kitaru.checkpoint
        def step() -> object:
            return kitaru.wait()

        @kitaru.flow
        def f() -> object:
            return step()

        with pytest.raises(kitaru.KitaruUsageError) as refused:
            f.run().wait(timeout=60)
        assert str(refused.value) == (
            "kitaru.wait() was called inside checkpoint 'step'; a checkpoint cannot pause halfway. "
            "Call it from the flow body, between checkpoints."
        )
        with pytest.raises(kitaru.KitaruNotInFlowError, match=r"kitaru\.wait\(\)"):
            kitaru.wait()

    def test_an_answer_passed_to_a_checkpoint_is_its_lineage(self) -> None:
        handle = order_flow.run()
        answer = {"item": "tea", "price": "1.5", "due": "2026-01-31"}
        KitaruClient().executions.input(handle.exec_id, answer).wait(timeout=60)
        graph = KitaruClient().executions.graph(handle.exec_id)
        assert [(e.source, e.target) for e in graph.inputs_of("describe")] == [("wait:order", "describe")]

    def test_an_abort_without_a_reason_says_how_to_ask_again(self) -> None:
        handle = approve_flow.run()
        aborted_handle = KitaruClient().executions.abort_wait(handle.exec_id)
        with pytest.raises(kitaru.KitaruWaitAborted) as aborted:
            aborted_handle.wait(timeout=60)
        assert str(aborted.value) == (
            f"wait 'approve' of execution {handle.exec_id} was aborted. Replay from it to ask again: "
            f"`kitaru executions replay {handle.exec_id} --from approve`."
        )
        assert aborted.value.reason is None

    def test_a_timed_out_wait_raises_on_every_replay_and_the_flow_goes_on(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The hold outlasts the deadline, so the wait times out in the first run, deterministically.
        monkeypatch.setenv("KITARU_WAIT_HOLD", "5")
        seen: list[str] = []

        @kitaru.flow
        def bounded() -> object:
            try:
                first = kitaru.wait(name="slow", expires_in=0.2)
            except kitaru.KitaruWaitTimeoutError as exc:
                seen.append(str(exc))
                first = "defaulted"
            monkeypatch.setenv("KITARU_WAIT_HOLD", "0")
            return (first, kitaru.wait(name="then"))

        handle = bounded.run()
        assert handle.status == "waiting"
        assert seen == [
            f"wait 'slow' of execution {handle.exec_id} got no answer before its deadline (expires_in=)."
        ]
        assert KitaruClient().executions.input(handle.exec_id, "x").wait(timeout=60) == ("defaulted", "x")
        assert seen[1:] == ["wait 'slow' passed its deadline (expires_in=) before it was answered."]
        kinds = [r.kind for r in journal_of(handle.exec_id)]
        assert kinds.count("wait_timed_out") == 1

    def test_an_uncaught_timeout_fails_the_flow(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KITARU_WAIT_HOLD", "5")

        @kitaru.flow
        def bounded() -> object:
            return kitaru.wait(name="slow", expires_in=0.2)

        with pytest.raises(kitaru.KitaruWaitTimeoutError, match="got no answer before its deadline"):
            bounded.run().wait(timeout=60)

    def test_an_answer_during_the_hold_goes_on_in_the_same_run(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The hold outlasts the answerer's patience (60 s): a flow that returns before the hold
        # ends saw the answer while it held, not when the hold ran out.
        monkeypatch.setenv("KITARU_WAIT_HOLD", "120")
        client = KitaruClient()
        answered = threading.Event()

        def answer_when_open() -> None:
            for _ in range(6000):  # bounded: 60 s
                executions = client.executions.list()
                if executions and client.executions.get(executions[0].id).open_waits:
                    client.executions.input(executions[0].id, True, resume=False)
                    answered.set()
                    return
                time.sleep(0.01)

        answerer = threading.Thread(target=answer_when_open)
        answerer.start()
        started = time.monotonic()
        handle = approve_flow.run()
        assert time.monotonic() - started < 120
        answerer.join(timeout=60)
        assert answered.is_set()
        # Answered with resume=False: only a flow that held for it (never suspended) finished.
        assert handle.status == "completed" and handle.wait(timeout=60) == "shipped"

    def test_resuming_an_open_wait_keeps_it_as_it_was_opened(self) -> None:
        @kitaru.flow
        def later() -> object:
            return kitaru.wait(name="later", expires_in=3600)

        handle = later.run()
        client = KitaruClient()
        [before] = client.executions.get(handle.exec_id).open_waits
        assert client.executions.resume(handle.exec_id).status == "waiting"
        [after] = client.executions.get(handle.exec_id).open_waits
        assert after.deadline == before.deadline  # resuming never extends a deadline
        assert [r.kind for r in journal_of(handle.exec_id)].count("wait_opened") == 1

    def test_a_deadline_that_passed_while_it_waited_times_out_on_resume(self) -> None:
        @kitaru.flow
        def bounded() -> object:
            try:
                return kitaru.wait(name="slow", expires_in=0.3)
            except kitaru.KitaruWaitTimeoutError:
                return "defaulted"

        handle = bounded.run()
        if handle.status == "waiting":
            [w] = KitaruClient().executions.get(handle.exec_id).open_waits
            assert w.deadline is not None
            time.sleep(max(0.0, w.deadline - time.time()) + 0.05)
            handle = KitaruClient().executions.resume(handle.exec_id)
        # else: a slow machine spent the whole timeout before the flow could suspend, and the wait
        # timed out in the first run: the same outcome, reached earlier.
        assert handle.wait(timeout=60) == "defaulted"

    def test_an_answer_that_lands_just_before_it_suspends_is_not_lost(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The answer comes after the wait stopped looking and before the execution suspends: the
        # store's suspend sees it (the wait names what it waits on) and the flow goes on at once.
        from kitaru._engine.runner import Runner

        runtime = KitaruClient()._runtime
        store = runtime.astate
        real_suspend = store.suspend

        async def answered_first(exec_id: str, owner: str, waiting_on: Sequence[str]) -> bool:
            await Runner(runtime).answer(exec_id, "approve", True, take_lease=False)
            return await real_suspend(exec_id, owner, waiting_on)

        monkeypatch.setattr(store, "suspend", answered_first)
        handle = approve_flow.run()
        assert handle.status == "completed" and handle.wait(timeout=60) == "shipped"
