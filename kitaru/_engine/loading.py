"""Where flows live: each ``@flow`` by its import target, and loading the code a journal names
(a module, or a script that ran as ``__main__``) to resume it in any process.

An execution of a deployed version (``flow.deploy()``) names its version instead: its code is the
version's archive, fetched from the stack's artifact store into a cache keyed by its SHA-256 and
imported from there, never from the working tree (:func:`aload_execution_flow`)."""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kitaru import serialization
from kitaru.errors import KitaruUsageError

from .context import logger

if TYPE_CHECKING:
    from kitaru.store import ExecutionRecord

    from .flow import Flow
    from .runtime import Runtime

__all__ = ["SCRIPT_MODULE_PREFIX", "aload_execution_flow", "aload_version", "load_flow", "register"]

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


# -- deployed versions ------------------------------------------------------------------------------

#: Flows of deployed code this process imported, by (archive SHA-256, target).
_VERSION_FLOWS: dict[tuple[str, str], Flow[Any, Any]] = {}
# Importing a version swaps entries of sys.modules, sys.path and the registry for a moment; one
# import at a time, so two threads loading versions never see each other's half-swapped state.
_version_lock = threading.RLock()


def code_cache() -> Path:
    """Where this process unpacks code archives (one directory per SHA-256): ``$KITARU_CODE_CACHE``,
    else ``code/`` under kitaru's home. The worker uses the same cache."""
    import os

    from kitaru.worker import CODE_CACHE_ENV

    explicit = os.environ.get(CODE_CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    from kitaru.config import home

    return home() / "code"


async def aload_execution_flow(runtime: Runtime, record: ExecutionRecord) -> Flow[Any, Any]:
    """The flow an execution runs: its deployed version's code when it recorded one (pinned:
    newer deploys do not change it), else the code its target names."""
    deployment = record.metadata.get("deployment")
    if deployment:
        return await aload_version(runtime, deployment)
    return load_flow(record.target, record.sys_path)


async def aload_version(runtime: Runtime, deployment: Mapping[str, Any]) -> Flow[Any, Any]:
    """The flow of a deployed version (``deployment``: the version's summary an execution records,
    with ``archive_key``, ``archive_sha256`` and ``target``), imported from its archive.

    The archive comes from the runtime's artifact store and is checked against the SHA-256 the
    state store recorded before anything in it is read or run. The returned flow carries
    ``deployment``, so executions created from it record their version."""
    from kitaru import _shipping

    sha, target, key = deployment["archive_sha256"], deployment["target"], deployment["archive_key"]
    if key != _shipping.archive_key(sha):
        raise KitaruUsageError(
            f"version {deployment.get('version')} of flow {deployment.get('flow')!r} names archive "
            f"{key!r}, which is not the archive of its recorded hash {sha}; it is not loaded."
        )
    base = _VERSION_FLOWS.get((sha, target))
    if base is None:
        root = await _shipping.fetch(runtime.aartifacts, key, code_cache())
        base = _import_version(root, target)
        _VERSION_FLOWS[(sha, target)] = base
    # Identical versions share one archive (and one import); each gets its own summary.
    versioned = copy.copy(base)
    versioned.deployment = dict(deployment)
    return versioned


def _import_version(root: Path, target: str) -> Flow[Any, Any]:
    """Import ``target`` from an unpacked archive at ``root``.

    The archive's top-level modules take their own names (``agent``, ``agent.tools``), which the
    process may already hold from its working tree (a script that invokes its own deployed flow)
    or another version. Those are moved aside for the import and put back after it: the version's
    functions keep their own module objects through their globals. When nothing was in the way,
    the version's modules stay imported and its root stays on ``sys.path`` (at the end), so
    modules it imports later, and classes named by stored values, resolve to its code."""
    location, _, qualname = target.rpartition(":")
    tops = {
        p.stem if p.suffix == ".py" else p.name
        for p in root.iterdir()
        if not p.name.startswith(".") and (p.is_dir() or p.suffix == ".py")
    } - {"kitaru"}

    def ours(name: str) -> bool:
        return name.partition(".")[0] in tops

    with _version_lock:
        displaced = {name: module for name, module in sys.modules.items() if ours(name)}
        for name in displaced:
            del sys.modules[name]
        registry = dict(_REGISTRY)
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
        loaded = False
        try:
            with _loading_code(f"{target} (deployed, {root.name[:12]})"):
                module = _load_script(str(root / location)) if location.endswith(".py") else None
                if module is None:
                    module = importlib.import_module(location)
            obj: Any = module
            for part in qualname.split("."):
                obj = getattr(obj, part)
            if not any(obj is known for known in _REGISTRY.values()):
                raise KitaruUsageError(f"{target!r} in the deployed code is not a @flow.")
            loaded = True
        except (ImportError, AttributeError, OSError) as exc:
            raise KitaruUsageError(
                f"cannot load flow {target!r} from its deployed code ({root}): {exc}. Its "
                "dependencies come from this environment; install what it imports."
            ) from exc
        finally:
            sys.path.remove(str(root))
            if displaced:
                for name in [name for name in sys.modules if ours(name)]:
                    del sys.modules[name]
                sys.modules.update(displaced)
                _REGISTRY.clear()
                _REGISTRY.update(registry)
            elif loaded:
                sys.path.append(str(root))
    flow_obj: Flow[Any, Any] = obj
    return flow_obj
