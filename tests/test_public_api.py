"""``kitaru`` is the public door: its ``__all__`` is exactly what it exports, and importing it is light."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from importlib import import_module
from inspect import isclass
from types import ModuleType

import pytest

import kitaru
from kitaru.errors import KitaruError


def _public_names(module: ModuleType) -> set[str]:
    """Names a user sees on ``module``: everything not underscored, except submodules and
    ``from __future__`` features."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType)
        and type(value).__module__ != "__future__"
    }


def test_all_matches_the_public_names() -> None:
    exported = set(kitaru.__all__)
    public = _public_names(kitaru)
    assert not (missing := public - exported), f"public in kitaru but not in __all__: {missing}"
    assert not (extra := exported - public), f"in kitaru.__all__ but not public in kitaru: {extra}"


def test_all_has_no_duplicates_and_every_name_exists() -> None:
    assert len(kitaru.__all__) == len(set(kitaru.__all__))
    for name in kitaru.__all__:
        assert getattr(kitaru, name, None) is not None, name


def test_the_awaitable_forms_are_exported() -> None:
    # Async flows call these with `await`; each has a sync twin of the same name without the
    # async marker (same recording, same journal).
    import inspect

    assert inspect.iscoroutinefunction(kitaru.allm) and not inspect.iscoroutinefunction(kitaru.llm)
    assert inspect.iscoroutinefunction(kitaru.wait_async) and not inspect.iscoroutinefunction(kitaru.wait)
    assert inspect.iscoroutinefunction(kitaru.aload) and not inspect.iscoroutinefunction(kitaru.load)
    assert {"allm", "llm", "wait", "wait_async", "load", "aload"} <= set(kitaru.__all__)


def test_anyio_is_a_declared_dependency() -> None:
    # The engine imports anyio itself (task groups, cancel scopes, the portal): it must not rest on
    # another package happening to pull it in.
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(kitaru.__file__).parent.parent / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert "anyio" in names


def test_version() -> None:
    assert isinstance(kitaru.__version__, str) and kitaru.__version__


def test_exported_errors_are_kitaru_errors() -> None:
    errors = [
        getattr(kitaru, n)
        for n in kitaru.__all__
        if isclass(getattr(kitaru, n)) and issubclass(getattr(kitaru, n), BaseException)
    ]
    assert KitaruError in errors
    for error in errors:
        assert issubclass(error, KitaruError), f"{error.__name__} does not derive from KitaruError"


def test_every_error_in_the_tree_is_exported() -> None:
    import kitaru.errors

    assert set(kitaru.errors.__all__) <= set(kitaru.__all__)
    for name in kitaru.errors.__all__:
        assert getattr(kitaru, name) is getattr(kitaru.errors, name)


def test_public_modules_export_what_their_all_names() -> None:
    # Modules under kitaru that are not private (no ``_`` segment) each declare an ``__all__``
    # whose every name exists.
    for _finder, name, _ispkg in pkgutil.walk_packages(kitaru.__path__, "kitaru."):
        if "._" in name or name.endswith("__main__"):
            continue
        module = import_module(name)
        names = getattr(module, "__all__", None)
        assert names is not None, f"{name} has no __all__"
        for attr in names:
            assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which {name} lacks"


HEAVY = ("pydantic", "stevedore", "click", "cloudpickle", "anyio", "httpx")


def test_import_kitaru_stays_light() -> None:
    """``import kitaru`` must not pull in the heavy dependencies: they load when first used."""
    code = (
        "import json, sys; import kitaru; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("heavy", HEAVY)
def test_the_probe_sees_heavy_imports(heavy: str) -> None:
    # The check above only means something if the same probe notices a module that was imported.
    code = f"import sys, {heavy}; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "True"
