"""Where flows live: each ``@flow`` by its import target, and loading the code a journal names
(a module, or a script that ran as ``__main__``) to resume it in any process."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kitaru import serialization
from kitaru.errors import KitaruUsageError

from .context import logger

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["SCRIPT_MODULE_PREFIX", "load_flow", "register"]

_REGISTRY: dict[str, Flow[Any, Any]] = {}


def register(flow_obj: Flow[Any, Any]) -> None:
    """Know ``flow_obj`` by its import target (done when ``@flow`` is applied)."""
    _REGISTRY[flow_obj.target] = flow_obj


#: A script that ran as ``__main__`` is imported again under this prefix to resume its flows.
SCRIPT_MODULE_PREFIX = "__kitaru_main_"

# The code kitaru is importing to resume an execution (a module or script path), while it does.
# A context variable, not a global: another thread of this process may start flows meanwhile.
_loading: ContextVar[str | None] = ContextVar("kitaru_loading_code", default=None)
_warned_skips: set[str] = set()


def _import_target(fn: Callable[..., Any]) -> tuple[str, str | None]:
    """Where another process finds this function: ``module:qualname`` plus the sys.path root, or
    the absolute path of the script for functions defined in ``__main__``.

    A script re-imported by :func:`_load_script` (its module named ``__kitaru_main_...``) keeps
    its path form too: a replay created from that import must name the script, which any process
    can load, not the private module name, which only this process has."""
    module_name, qualname = fn.__module__, fn.__qualname__
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    # A script this process loaded under its private name (to resume or replay it) is still
    # that script: record its path, which every process can load, not the private name.
    if module_name == "__main__" or module_name.startswith(SCRIPT_MODULE_PREFIX):
        if file is None:
            return f"__main__:{qualname}", None
        path = Path(file).resolve()
        return f"{path}:{qualname}", str(path.parent)
    if file is None:
        return f"{module_name}:{qualname}", None
    root = Path(file).resolve().parent
    depth = module_name.count(".") + (1 if Path(file).name == "__init__.py" else 0)
    for _ in range(depth):
        root = root.parent
    return f"{module_name}:{qualname}", str(root)


@contextmanager
def _loading_code(location: str) -> Iterator[None]:
    """Mark that ``location`` is being imported to resume an execution (see :func:`_skipped`)."""
    token = _loading.set(location)
    try:
        yield
    finally:
        _loading.reset(token)


def _skipped(flow_obj: Flow[Any, Any], call: str) -> bool:
    """Whether ``flow.<call>()`` runs while kitaru imports code to resume an execution; it is then
    skipped (and said once per script or module).

    Such a call is the script's own top-level code (``my_flow.run(...)`` without an
    ``if __name__ == "__main__":`` guard): running it would start a second execution, and pay for
    its checkpoints again, every time something resumes the first."""
    location = _loading.get()
    if location is None:
        return False
    if location not in _warned_skips:
        _warned_skips.add(location)
        logger.warning(
            "kitaru: %s.%s() was skipped while kitaru imported %s to resume an execution: the call "
            "is top-level code, and running it would start a second execution (paying for its "
            'checkpoints again). Put it under `if __name__ == "__main__":` so importing the '
            "file runs nothing.",
            flow_obj.name,
            call,
            location,
        )
    return True


def load_flow(target: str, sys_path: str | None) -> Flow[Any, Any]:
    """Find the flow a journal names, importing its module or script if this process lacks it.

    While the code is imported, calls it makes to ``run``/``start``/``replay`` are skipped: see
    :func:`_skipped`."""
    if target in _REGISTRY:
        return _REGISTRY[target]
    location, _, qualname = target.rpartition(":")
    if "<locals>" in qualname:
        raise KitaruUsageError(
            f"flow {qualname!r} was defined inside a function, so no other process can import "
            "it to resume. Define flows at module level."
        )
    if sys_path and sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    try:
        with _loading_code(location):
            if location.endswith(".py"):
                module = _load_script(location)
            else:
                module = importlib.import_module(location)
        obj: Any = module
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, OSError) as exc:
        raise KitaruUsageError(
            f"cannot load flow {target!r} to resume it: {exc}. Run from an environment where the "
            "flow's code is installed or present at that path."
        ) from exc
    # Every @flow registers itself when applied: a loaded object is a flow if it is registered.
    if not any(obj is known for known in list(_REGISTRY.values())):
        raise KitaruUsageError(f"{target!r} is not a @flow (found {type(obj).__qualname__}).")
    _REGISTRY[target] = obj
    flow_obj: Flow[Any, Any] = obj
    return flow_obj


def _load_script(path: str) -> ModuleType:
    """Import a script that ran as ``__main__`` under a private name (its main block stays idle)."""
    name = SCRIPT_MODULE_PREFIX + hashlib.sha256(path.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no loadable script at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Values the script stored with types from __main__ resolve against it from now on.
    serialization.MAIN_ALIASES.append(module)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        serialization.MAIN_ALIASES.remove(module)
        raise
    return module
