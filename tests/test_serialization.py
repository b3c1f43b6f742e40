"""The serializer chain: every value comes back as the same type with the same value."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import warnings
from typing import Any

import pydantic
import pytest

from kitaru.errors import KitaruConfigError, KitaruSerializationError
from kitaru.serialization import Serialized, dumps, loads, type_path

# -- types the values below are made of (module level, so loading can import them by name) -------


class Address(pydantic.BaseModel):
    city: str
    zip: str | None = None


class Person(pydantic.BaseModel):
    name: str
    born: dt.date
    addresses: list[Address]
    scores: dict[str, float] = {}


@dataclasses.dataclass
class Point:
    x: float
    y: float


@dataclasses.dataclass
class Track:
    name: str
    started: dt.datetime
    points: list[Point]
    origin: Point | None = None


class Plain:
    """A class neither JSON, pydantic nor a dataclass: only pickle can store it."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is Plain and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass
class HoldsPlain:
    """A dataclass pydantic cannot describe (a field of an arbitrary class)."""

    label: str
    inner: Plain


@dataclasses.dataclass
class HoldsAnything:
    """A dataclass pydantic describes but changes: a tuple in an ``Any`` field comes back a list."""

    payload: Any


@dataclasses.dataclass
class Mistyped:
    count: int


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


UNPICKLED: list[object] = []


class RecordsUnpickling:
    """Notes every time an instance is unpickled, to prove loading did not unpickle."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        UNPICKLED.append(self)
        self.__dict__.update(state)


# -- helpers ----------------------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equal values of identical types, all the way down (``True`` is not ``1``, ``(1,)`` not
    ``[1]``); NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(
            _same(ka, kb) and _same(a[ka], b[kb]) for ka, kb in zip(a, b, strict=True)
        )
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def _round_trip(value: Any) -> tuple[Serialized, Any]:
    stored = dumps(value)
    assert isinstance(stored.data, bytes)
    return stored, loads(stored.serializer, stored.type_path, stored.data)


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KITARU_ALLOW_PICKLE", "0")


# -- round trips ------------------------------------------------------------------------------------

_NOW = dt.datetime(2026, 5, 9, 7, 35, 25, 123456, tzinfo=dt.UTC)

ROUND_TRIPS: list[tuple[str, Any, str | None]] = [
    # (id, value, the serializer that must take it; None when any may)
    ("none", None, "json"),
    ("true", True, "json"),
    ("false", False, "json"),
    ("int", 42, "json"),
    ("negative_int", -7, "json"),
    ("big_int", 2**100, "json"),
    ("float", 1.5, "json"),
    ("whole_float", 2.0, "json"),
    ("negative_zero", -0.0, "json"),
    ("nan", math.nan, "json"),
    ("inf", math.inf, "json"),
    ("minus_inf", -math.inf, "json"),
    ("str", 'héllo ✓ \n\t"quoted" \u2028', "json"),
    ("empty_str", "", "json"),
    ("lone_surrogate", "file-\udcff.txt", "json"),
    ("empty_list", [], "json"),
    ("empty_dict", {}, "json"),
    (
        "nested_json",
        {"a": [1, 2.5, None, True, {"b": ["c", {"d": {}}]}], "e": {"f": [[], [-1]]}},
        "json",
    ),
    ("tuple", (1, "a", None), None),
    ("nested_tuple", ((1, 2), [3, (4,)]), None),
    ("list_holding_tuple", [1, (2, 3)], None),
    ("set", {1, 2, 3}, None),
    ("frozenset", frozenset({"a", "b"}), None),
    ("int_keys", {1: "one", 2: "two"}, None),
    ("mixed_keys", {"a": 1, 2: "b", (3, 4): None}, None),
    ("dict_holding_set", {"tags": {"x", "y"}}, None),
    ("bytes", b"\x00\x01\xff binary", "bytes"),
    ("empty_bytes", b"", "bytes"),
    ("bytearray", bytearray(b"\x00mutable\xff"), "bytes"),
    (
        "pydantic_nested",
        Person(
            name="Ada",
            born=dt.date(1815, 12, 10),
            addresses=[Address(city="London", zip="W1"), Address(city="Paris")],
            scores={"math": 9.5},
        ),
        "pydantic",
    ),
    (
        "dataclass_nested",
        Track(
            name="walk",
            started=_NOW,
            points=[Point(0.0, 1.5), Point(-2.25, 3.0)],
            origin=Point(0.0, 0.0),
        ),
        "dataclass",
    ),
    ("dataclass_naive_datetime", Track("t", dt.datetime(2020, 1, 2, 3, 4, 5), []), "dataclass"),
    ("dataclass_pydantic_cannot_describe", HoldsPlain("x", Plain([1, 2])), "cloudpickle"),
    ("dataclass_pydantic_would_change", HoldsAnything((1, 2)), "cloudpickle"),
    ("plain_class", Plain({"k": (1, 2)}), "cloudpickle"),
    ("enum", Color.BLUE, "cloudpickle"),
    ("list_of_models", [Address(city="Oslo")], "cloudpickle"),
]


class TestRoundTrips:
    @pytest.mark.parametrize(
        ("value", "serializer"),
        [pytest.param(v, s, id=i) for i, v, s in ROUND_TRIPS],
    )
    def test_round_trip_keeps_type_and_value(self, value: Any, serializer: str | None) -> None:
        stored, loaded = _round_trip(value)
        if serializer is not None:
            assert stored.serializer == serializer
        assert _same(loaded, value), f"{value!r} came back as {loaded!r}"

    def test_nested_types_come_back(self) -> None:
        track = Track("t", _NOW, [Point(1.0, 2.0)])
        _, loaded = _round_trip(track)
        assert type(loaded.points[0]) is Point
        assert loaded.started == _NOW and loaded.started.tzinfo is not None

        person = Person(name="A", born=dt.date(2000, 1, 1), addresses=[Address(city="X")])
        _, loaded = _round_trip(person)
        assert type(loaded.addresses[0]) is Address
        assert type(loaded.born) is dt.date

    def test_memoryview_loads_as_bytes(self) -> None:
        _, loaded = _round_trip(memoryview(b"view"))
        assert _same(loaded, b"view")

    def test_type_path_names_the_type(self) -> None:
        assert dumps(Plain(1)).type_path == "test_serialization:Plain"
        assert dumps(Point(1.0, 2.0)).type_path == type_path(Point) == "test_serialization:Point"
        assert dumps({"a": 1}).type_path == "builtins:dict"

    def test_json_bytes_are_valid_utf8_json(self) -> None:
        import json

        for value in ("file-\udcff.txt", {"k": ["ü", "\ud800"]}):
            stored = dumps(value)
            assert json.loads(stored.data.decode("utf-8")) == value

    def test_a_locally_defined_class_round_trips(self) -> None:
        @dataclasses.dataclass
        class Local:
            n: int

        stored, loaded = _round_trip(Local(3))
        assert stored.serializer == "cloudpickle"
        assert loaded.n == 3 and type(loaded).__qualname__ == Local.__qualname__

    def test_dataclass_fallback_does_not_warn(self) -> None:
        # A field holding the wrong type: pydantic's serializer would warn; the value just goes to
        # the next serializer, silently.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stored, loaded = _round_trip(Mistyped("three"))  # type: ignore[arg-type]
        assert [str(w.message) for w in caught] == []
        assert stored.serializer == "cloudpickle"
        assert loaded == Mistyped("three")  # type: ignore[arg-type]


class TestNumpy:
    @pytest.mark.parametrize(
        "make",
        [
            lambda np: np.arange(12, dtype=np.int64).reshape(3, 4),
            lambda np: np.array([1.5, np.nan, -np.inf], dtype=np.float32),
            lambda np: np.array([True, False]),
            lambda np: np.zeros((0, 3)),
            lambda np: np.array(["a", "bc"]),
            lambda np: np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        ],
        ids=["int2d", "float32", "bool", "empty", "unicode", "fortran"],
    )
    def test_array_round_trip(self, make: Any) -> None:
        np = pytest.importorskip("numpy")
        value = make(np)
        stored, loaded = _round_trip(value)
        assert stored.serializer == "numpy"
        assert type(loaded) is np.ndarray
        assert loaded.dtype == value.dtype and loaded.shape == value.shape
        assert np.array_equal(loaded, value, equal_nan=value.dtype.kind == "f")

    def test_object_array_needs_pickle(self, monkeypatch: pytest.MonkeyPatch) -> None:
        np = pytest.importorskip("numpy")
        value = np.array([Plain(1), None], dtype=object)
        stored, loaded = _round_trip(value)
        assert stored.serializer == "cloudpickle"
        assert list(loaded) == list(value)


# -- pickle switched off ----------------------------------------------------------------------------


class TestPickleOff:
    @pytest.mark.parametrize("setting", ["0", "false", "no", "False"])
    def test_custom_class_raises_naming_the_fix(self, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
        monkeypatch.setenv("KITARU_ALLOW_PICKLE", setting)
        with pytest.raises(KitaruSerializationError, match="KITARU_ALLOW_PICKLE=1") as info:
            dumps(Plain(1))
        assert "Plain" in str(info.value)

    @pytest.mark.usefixtures("no_pickle")
    @pytest.mark.parametrize("value", [(1, 2), {1: "a"}, HoldsPlain("x", Plain(1))], ids=repr)
    def test_values_only_pickle_can_store_raise(self, value: Any) -> None:
        with pytest.raises(KitaruSerializationError):
            dumps(value)

    @pytest.mark.usefixtures("no_pickle")
    @pytest.mark.parametrize(
        "value",
        [
            {"a": [1, None]},
            b"raw",
            bytearray(b"raw"),
            Address(city="Rome"),
            Track("t", _NOW, [Point(1.0, 2.0)]),
        ],
        ids=["json", "bytes", "bytearray", "pydantic", "dataclass"],
    )
    def test_other_serializers_still_work(self, value: Any) -> None:
        stored, loaded = _round_trip(value)
        assert stored.serializer != "cloudpickle"
        assert _same(loaded, value)

    def test_loading_pickled_bytes_raises_config_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        value = RecordsUnpickling()
        value.__dict__["n"] = 1
        stored = dumps(value)
        assert stored.serializer == "cloudpickle"
        UNPICKLED.clear()

        monkeypatch.setenv("KITARU_ALLOW_PICKLE", "0")
        with pytest.raises(KitaruConfigError, match="KITARU_ALLOW_PICKLE=1"):
            loads(stored.serializer, stored.type_path, stored.data)
        assert UNPICKLED == []

        monkeypatch.setenv("KITARU_ALLOW_PICKLE", "1")
        loaded = loads(stored.serializer, stored.type_path, stored.data)
        assert loaded.n == 1 and UNPICKLED == [loaded]


# -- loading what cannot be loaded --------------------------------------------------------------------


class TestLoadErrors:
    def test_unknown_serializer(self) -> None:
        with pytest.raises(KitaruSerializationError, match="no-such-serializer"):
            loads("no-such-serializer", "builtins:int", b"1")

    @pytest.mark.parametrize(
        "type_ref",
        ["test_serialization:NoSuchModel", "kitaru_no_such_module_xyz:Model", "test_serialization:"],
    )
    def test_missing_type(self, type_ref: str) -> None:
        with pytest.raises(KitaruSerializationError):
            loads("pydantic", type_ref, b"{}")

    @pytest.mark.parametrize(
        ("serializer", "type_ref", "data"),
        [
            ("json", "builtins:dict", b"{not json"),
            ("pydantic", "test_serialization:Address", b'{"zip": "x"}'),
            ("dataclass", "test_serialization:Point", b'{"x": "not a number"}'),
            ("cloudpickle", "test_serialization:Plain", b"not a pickle"),
        ],
        ids=["json", "pydantic", "dataclass", "cloudpickle"],
    )
    def test_corrupt_bytes(self, serializer: str, type_ref: str, data: bytes) -> None:
        with pytest.raises(KitaruSerializationError):
            loads(serializer, type_ref, data)


# -- what mutation testing showed untested -----------------------------------------------------------


class Outer:
    @dataclasses.dataclass
    class Inner:
        n: int


class TestStoredForm:
    """The bytes and type paths kitaru stores: content hashes (diff, replay's reuse) are taken over
    them, so they must not change between runs or versions."""

    def test_json_is_compact_utf8(self) -> None:
        assert dumps({"k": ["é", 1, None]}).data == '{"k":["é",1,null]}'.encode()

    def test_text_that_is_not_utf8_is_escaped_and_still_compact(self) -> None:
        assert dumps(["file-\udcff", 1]).data == b'["file-\\udcff",1]'

    def test_a_nested_class_round_trips_by_its_dotted_name(self) -> None:
        stored, loaded = _round_trip(Outer.Inner(4))
        assert stored.serializer == "dataclass"
        assert stored.type_path == "test_serialization:Outer.Inner"
        assert type(loaded) is Outer.Inner and loaded == Outer.Inner(4)

    def test_a_locally_defined_pydantic_model_round_trips(self) -> None:
        class LocalModel(pydantic.BaseModel):
            n: int

        stored, loaded = _round_trip(LocalModel(n=2))
        assert stored.serializer == "cloudpickle"  # loading could not find the class by name
        assert loaded.n == 2

    def test_numpy_arrays_are_typed_as_ndarray(self) -> None:
        np = pytest.importorskip("numpy")
        assert dumps(np.arange(3)).type_path == "numpy:ndarray"

    def test_a_numpy_payload_that_carries_a_pickle_is_refused(self) -> None:
        # Trust model: bytes tagged `numpy` are never unpickled, even with pickle allowed (a
        # tampered artifact must not run code when it is loaded).
        np = pytest.importorskip("numpy")
        import io

        buf = io.BytesIO()
        np.save(buf, np.array([Plain(1)], dtype=object), allow_pickle=True)
        with pytest.raises(KitaruSerializationError, match="numpy"):
            loads("numpy", "numpy:ndarray", buf.getvalue())

    def test_a_serialization_error_names_the_type(self) -> None:
        class Unpicklable:
            def __reduce__(self) -> Any:
                raise TypeError("no")

        with pytest.raises(KitaruSerializationError, match="Unpicklable: no"):
            dumps(Unpicklable())


class TestScriptTypes:
    """Types defined in a script run as ``__main__`` are stored as ``__main__:Name``; resuming the
    script from elsewhere imports it under another name, and loading looks the type up there."""

    def test_a_main_type_is_found_in_the_reimported_script(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import types

        from kitaru import serialization

        script = types.ModuleType("kitaru_script_x")
        script.Point = Point  # type: ignore[attr-defined]
        older = types.ModuleType("kitaru_script_y")  # an earlier alias without the type
        monkeypatch.setattr(serialization, "MAIN_ALIASES", [script, older])
        data = dumps(Point(1.0, 2.0)).data
        assert loads("dataclass", "__main__:Point", data) == Point(1.0, 2.0)

    def test_a_module_that_cannot_be_imported_says_how_to_fix_it(self) -> None:
        with pytest.raises(KitaruSerializationError, match=r"cannot import type .*Make the module"):
            loads("pydantic", "kitaru_no_such_module_xyz:Model", b"{}")
