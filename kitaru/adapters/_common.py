"""What the agent adapters share: where a call stands (flow scope, checkpoint, no flow), stable call
names and fingerprints, unwrapping kitaru's control flow out of exception groups, and finding an
agent again in another process so an adapter-opened flow can be resumed anywhere."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn, TypedDict

from kitaru._install import install_hint
from kitaru.errors import KitaruMissingDependencyError, KitaruStateError, KitaruUsageError

__all__ = [
    "AgentRef",
    "CheckpointConfig",
    "adapter_step",
    "agent_run_result",
    "at_flow_scope",
    "checkpoint_config",
    "find_agent",
    "import_extra",
    "in_checkpoint",
    "register_agent",
    "reraise_control",
    "safe_name",
    "stable_digest",
]


def import_extra(module: str, extra: str, what: str) -> Any:
    """Import ``module`` or say which kitaru extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise KitaruMissingDependencyError(
            f"{what} needs the `{module.split('.')[0]}` package: install it with `{install_hint(extra)}`."
        ) from exc


def at_flow_scope() -> bool:
    """True in a running flow's body, outside any checkpoint: where checkpoints and waits may run."""
    from kitaru._engine.context import current_call, current_execution

    return current_execution() is not None and current_call() is None


def in_checkpoint() -> bool:
    from kitaru._engine.context import current_call

    return current_call() is not None


_UNSAFE = re.compile(r"[:/\s]+")


def safe_name(*parts: str) -> str:
    """A checkpoint or wait name from parts (``:`` and ``/`` are reserved by call ids)."""
    return ".".join(_UNSAFE.sub("_", p) for p in parts if p)


_VOLATILE = frozenset({"timestamp", "run_id", "conversation_id", "created_at"})


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    return value


def stable_digest(value: Any) -> str:
    """A fingerprint of a JSON-able request that ignores per-run noise (timestamps, run ids), so a
    resumed run whose requests are the same is not reported as having changed inputs."""
    text = json.dumps(_stable(value), sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def reraise_control(group: BaseExceptionGroup[Any]) -> NoReturn:
    """Frameworks run tools in task groups, which wrap kitaru's suspend/cancel signals in an
    exception group; the engine must see the signal itself. Anything else is re-raised as is."""
    from kitaru._engine.context import _Cancelled, _Suspend

    for kind in (_Cancelled, _Suspend):
        match, _rest = group.split(kind)
        if match is not None:
            first: BaseException = match
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
    raise group


# -- finding an agent again in another process ----------------------------------------------------

AgentRef = dict[str, str | None]

_AGENTS: dict[tuple[str, str], Any] = {}


def register_agent(kind: str, name: str, wrapper: Any, depth: int = 2) -> AgentRef:
    """Remember ``wrapper`` under ``name`` and return how another process finds it: the module (or
    script) that created it, which it imports to run the creation again."""
    frame = sys._getframe(depth)
    module_name = frame.f_globals.get("__name__", "")
    file = frame.f_globals.get("__file__")
    _AGENTS[(kind, name)] = wrapper
    if module_name == "__main__" or module_name.startswith("__kitaru_main_"):
        script = str(Path(file).resolve()) if file else None
        return {"name": name, "module": None, "path": script, "root": None}
    root = None
    if file:
        path = Path(file).resolve()
        root_path = path.parent
        depth_up = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
        for _ in range(depth_up):
            root_path = root_path.parent
        root = str(root_path)
    return {"name": name, "module": module_name, "path": None, "root": root}


def find_agent(kind: str, ref: AgentRef) -> Any:
    """The wrapper ``ref`` names, importing the module or script that defines it if needed."""
    name = ref.get("name") or ""
    found = _AGENTS.get((kind, name))
    if found is not None:
        return found
    try:
        if ref.get("module"):
            root = ref.get("root")
            if root and root not in sys.path:
                sys.path.insert(0, root)
            importlib.import_module(ref["module"] or "")
        elif ref.get("path"):
            from kitaru._engine.flow import _load_script

            _load_script(ref["path"] or "")
    except (ImportError, OSError) as exc:
        raise KitaruUsageError(
            f"cannot load {kind} agent {name!r} to resume its run: {exc}. Run from an environment "
            "where the agent's module is importable."
        ) from exc
    found = _AGENTS.get((kind, name))
    if found is None:
        where = ref.get("module") or ref.get("path")
        raise KitaruUsageError(
            f"{kind} agent {name!r} was not created when {where} was loaded; create the durable "
            "agent at module level so a resumed run can find it."
        )
    return found


def agent_run_result(agent_name: str, exec_id: str, status: str) -> Any:
    """The result of a flow a run opened, once it stopped: its value, its failure, or -- when it
    waits for a human -- an error that says how to answer."""
    from kitaru.client import KitaruClient

    if status == "waiting":
        waits = KitaruClient().executions.get(exec_id).open_waits
        names = ", ".join(w.name for w in waits) or "a wait"
        raise KitaruStateError(
            f"agent run {exec_id} is waiting on {names}; the process is free. Answer with "
            f"`kitaru executions input {exec_id} --value true` (or false), which resumes it. "
            f"Use {agent_name}.run_flow(...) to get a handle instead of this error."
        )
    from kitaru._engine.flow import FlowHandle
    from kitaru._engine.runtime import get_runtime

    return FlowHandle(exec_id, get_runtime()).wait()


# -- the checkpoints an adapter opens ---------------------------------------------------------------


class CheckpointConfig(TypedDict, total=False):
    """How an adapter-made checkpoint behaves (the keys Kitaru 0.18's adapters took).

    ``retries``: attempts after a failure (each after ``retry_delay`` seconds, doubling, default 1);
    ``cache``: reuse an earlier call's output with the same inputs, in any execution of the flow
    (``None`` follows the flow's ``cache=``); ``type``: a label recorded with the call (the
    dashboard groups by it); ``runtime``: only ``"inline"`` (the call runs in the flow's process).
    """

    retries: int
    retry_delay: float
    cache: bool | None
    type: str
    runtime: Literal["inline"]


_CONFIG_KEYS = frozenset(CheckpointConfig.__annotations__)


def checkpoint_config(value: Mapping[str, Any] | None, what: str) -> CheckpointConfig:
    """``value`` checked: every key is one the adapters act on (none is accepted and ignored)."""
    if value is None:
        return CheckpointConfig()
    if not isinstance(value, Mapping):
        raise KitaruUsageError(f"{what} must be a dict of checkpoint options, got {value!r}.")
    unknown = set(value) - _CONFIG_KEYS
    if unknown:
        raise KitaruUsageError(f"{what} has unknown keys {sorted(unknown)}; it takes {sorted(_CONFIG_KEYS)}.")
    runtime = value.get("runtime", "inline")
    if runtime != "inline":
        raise KitaruUsageError(
            f"{what}: runtime={runtime!r} is not supported for adapter checkpoints (they run "
            "inside the agent's event loop); drop it or use runtime='inline'."
        )
    retries = value.get("retries", 0)
    delay = value.get("retry_delay", 1.0)
    if not isinstance(retries, int) or retries < 0 or not isinstance(delay, int | float) or delay < 0:
        raise KitaruUsageError(f"{what}: retries must be an int >= 0 and retry_delay a number >= 0.")
    if value.get("cache") not in (None, True, False):
        raise KitaruUsageError(f"{what}: cache must be True, False or None, got {value['cache']!r}.")
    if "type" in value and not (isinstance(value["type"], str) and value["type"]):
        raise KitaruUsageError(f"{what}: type must be a non-empty string, got {value['type']!r}.")
    checked: CheckpointConfig = dict(value)  # type: ignore[assignment]
    return checked


def adapter_step(fn: Callable[..., Any], *, name: str, config: CheckpointConfig, default_type: str) -> Any:
    """A checkpoint around one adapter call (a model request, a tool call, a whole run)."""
    import inspect

    from kitaru._engine.checkpoint import Checkpoint

    kind = config.get("type", default_type)
    options: dict[str, Any] = {}
    if "type" in inspect.signature(Checkpoint).parameters:
        options["type"] = kind
    else:
        # Until checkpoints carry a type of their own, the call's metadata records it.
        inner = fn

        async def typed(*args: Any, **kwargs: Any) -> Any:
            from kitaru._engine.api import log

            log(type=kind)
            return await inner(*args, **kwargs)

        typed.__qualname__ = fn.__qualname__
        fn = typed
    return Checkpoint(
        fn,
        name=name,
        retries=config.get("retries", 0),
        retry_delay=config.get("retry_delay", 1.0),
        backoff=2.0,
        retry_on=(Exception,),
        cache=config.get("cache"),
        **options,
    )
