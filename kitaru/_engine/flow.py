"""``@flow``: the durable agent boundary. Running one is the Runner's job
(:mod:`kitaru._engine.runner`); this module holds the definition and its entry points."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeAlias, TypeVar, overload

from kitaru.errors import KitaruError, KitaruNotFoundError, KitaruUsageError

from .context import running_loop
from .handles import AsyncFlowHandle, FlowHandle, SkippedAsyncFlowHandle, SkippedFlowHandle, blocking
from .loading import _import_target, _load_script, _skipped, load_flow, register
from .runner import Runner
from .runtime import get_runtime

if TYPE_CHECKING:
    import inspect

    from kitaru.config import ExecutionOptions, ImageSettings
    from kitaru.deployments import Deployment
    from kitaru.stack import Orchestrator

    from .runtime import Runtime

__all__ = ["AsyncFlowHandle", "Flow", "FlowHandle", "flow", "load_flow"]

# Kept importable from here (adapters load scripts with it).
__all__ += ["_load_script"]

P = ParamSpec("P")
#: What ``image=`` takes: an image name, a dict of image settings, or ImageSettings.
ImageInput: TypeAlias = "str | dict[str, Any] | ImageSettings"
R = TypeVar("R")


# -- the decorator --------------------------------------------------------------------------------


class Flow(Generic[P, R]):
    """A function made a durable flow by :func:`flow`."""

    fn: Callable[..., Any]
    name: str
    target: str
    sys_path: str | None
    deployment: dict[str, Any] | None = None
    """Set on a flow loaded from a deployed version: the version its executions record."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        stack: str | None = None,
        retries: int | None = None,
        cache: bool | None = None,
        image: ImageInput | None = None,
    ) -> None:
        import inspect

        from kitaru.config import image_settings

        if isinstance(fn, Flow):
            raise KitaruUsageError(f"{fn.target!r} is already a flow; apply @flow once.")
        if not callable(fn) or inspect.isclass(fn):
            raise KitaruUsageError(f"@flow needs a function, got {fn!r}.")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise KitaruUsageError(f"@flow cannot wrap generator {fn.__qualname__!r}.")
        if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
            raise KitaruUsageError(
                f"@flow on {fn.__qualname__!r}: retries must be an int >= 0, got {retries!r}."
            )
        if cache is not None and not isinstance(cache, bool):
            raise KitaruUsageError(
                f"@flow on {fn.__qualname__!r}: cache must be True or False, got {cache!r}."
            )
        self.stack = stack
        """The stack its executions run on when run()/start()/deploy() name none."""
        self.retries = retries
        """How many times a failed execution re-runs from its journal before it fails (None:
        ``configure()``, ``KITARU_RETRIES``, ``[tool.kitaru]`` decide; else 0)."""
        self.cache = cache
        """The default ``cache=`` of its checkpoints (one with its own ``cache=`` keeps it; None:
        ``configure()``, ``KITARU_CACHE``, ``[tool.kitaru]`` decide; else off)."""
        self.image = image_settings(image, f"@flow on {fn.__qualname__!r}: image")
        """The image settings of its jobs on remote stacks (recorded per execution)."""
        self.fn = fn
        self.name = name or fn.__name__
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.target, self.sys_path = _import_target(fn)
        functools.update_wrapper(self, fn)
        register(self)

    def __repr__(self) -> str:
        return f"<flow {self.name!r} ({self.target})>"

    def options(self, run: dict[str, Any]) -> ExecutionOptions:
        """The options an execution of this flow runs with: ``run``'s overrides (None: unset)
        over the decorator's, over ``configure()``, the environment and ``[tool.kitaru]``."""
        from kitaru.config import resolve_options

        return resolve_options({"retries": self.retries, "cache": self.cache, "image": self.image}, run)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        raise KitaruUsageError(
            f"flow {self.name!r} is not called directly: use `{self.name}.run(...)` (returns a "
            f"handle; `.wait()` gives the result) or `await {self.name}.start(...)` in async code."
        )

    # -- starting ---------------------------------------------------------------------------

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """The flow's arguments bound to its signature (a mismatch is a KitaruUsageError)."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise KitaruUsageError(f"flow {self.name!r}: {exc} (signature {self.signature})") from None
        bound.apply_defaults()
        return bound

    # `execution_id` and `stack` are keywords of run/start itself, and typing cannot place a keyword
    # between ParamSpec *args and **kwargs: the flow's arguments are checked when bound, at run time.
    def run(
        self,
        *args: Any,
        execution_id: str | None = None,
        stack: str | None = None,
        retries: int | None = None,
        cache: bool | None = None,
        image: ImageInput | None = None,
        **kwargs: Any,
    ) -> FlowHandle:
        """Run the flow until it finishes or suspends on a wait, blocking this thread.

        ``execution_id`` makes the start idempotent: an existing execution with that id is
        returned (and driven on if it was interrupted) instead of starting another. ``stack`` runs
        it on that configured stack instead of the active one (``kitaru stack list``).
        ``retries``, ``cache`` and ``image`` override the flow's own for this execution (recorded
        with it, so a resume anywhere keeps them).
        """
        if _skipped(self, "run"):
            return SkippedFlowHandle()
        if running_loop() is not None:
            raise KitaruUsageError(
                f"{self.name}.run() blocks, and an event loop is running in this thread. Use "
                f"`handle = await {self.name}.start(...)` then `await handle.result()`."
            )
        options = self._run_options(retries, cache, image)
        runtime = get_runtime(stack or self.stack)
        elsewhere = _elsewhere(runtime)
        if elsewhere is not None:
            # The stack runs executions elsewhere (a Kubernetes Job): create, submit, return.
            exec_id = blocking(
                Runner(runtime).start_elsewhere, elsewhere, self, args, kwargs, execution_id, options
            )
            return FlowHandle(exec_id, runtime)
        exec_id, outcome = blocking(Runner(runtime).start, self, args, kwargs, execution_id, options)
        return FlowHandle(exec_id, runtime, outcome and outcome.raise_interrupt())

    def _run_options(self, retries: Any, cache: Any, image: Any) -> ExecutionOptions:
        from kitaru.config import image_settings

        if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
            raise KitaruUsageError(f"{self.name}.run(retries=...) takes an int >= 0, got {retries!r}.")
        if cache is not None and not isinstance(cache, bool):
            raise KitaruUsageError(f"{self.name}.run(cache=...) takes True or False, got {cache!r}.")
        run_image = image_settings(image, f"{self.name}.run(image=...)")
        return self.options({"retries": retries, "cache": cache, "image": run_image})

    async def start(
        self,
        *args: Any,
        execution_id: str | None = None,
        stack: str | None = None,
        retries: int | None = None,
        cache: bool | None = None,
        image: ImageInput | None = None,
        **kwargs: Any,
    ) -> AsyncFlowHandle:
        """Start the flow on the running event loop; ``await handle.result()`` gives its value.

        Async flow bodies run as a task on this loop; sync ones on a worker thread.
        ``execution_id``, ``stack``, ``retries``, ``cache`` and ``image`` work as in :meth:`run`.
        """
        if _skipped(self, "start"):
            return SkippedAsyncFlowHandle()
        import asyncio

        from .runtime import OPTIONS_METADATA

        options = self._run_options(retries, cache, image)
        runtime = get_runtime(stack or self.stack)
        runner = Runner(runtime)
        elsewhere = _elsewhere(runtime)
        if elsewhere is not None:
            exec_id = await runner.start_elsewhere(elsewhere, self, args, kwargs, execution_id, options)
            return AsyncFlowHandle(exec_id, runtime, None)
        record, created, started = await runner.create(
            self, args, kwargs, execution_id, metadata={OPTIONS_METADATA: options.record()}
        )
        if created:
            task = asyncio.ensure_future(runner.drive(self, record, started, []))
        else:
            leased = await runner.take_interrupted(record)
            if leased is None:
                return AsyncFlowHandle(record.id, runtime, None)
            flow_obj, started = await runner.load(leased)
            task = asyncio.ensure_future(runner.drive(flow_obj, leased, started))
        return AsyncFlowHandle(record.id, runtime, task)

    # -- deployments ------------------------------------------------------------------------

    def deploy(
        self,
        *,
        tag: str | None = None,
        weight: int | None = None,
        image: str | None = None,
        stack: str | None = None,
        message: str | None = None,
    ) -> Deployment:
        """Freeze this flow's code into a new immutable version ``N`` and return it.

        The flow's source root is archived (content-addressed: identical versions share one
        upload) to the stack's artifact store with the lock/requirements it was built with;
        ``image``, the target, the stack, who and ``message`` are recorded. The flow's first
        version gets the tag ``default``; ``tag`` points another tag (or ``default``) at the new
        version, and ``weight`` (0-100) makes that tag a canary taking that share of new
        executions invoked on ``default``. Running executions are not touched: each stays on
        its own version."""
        from kitaru.deployments import Deployments, adeploy

        if _skipped(self, "deploy"):
            # Top-level code of a module being imported to run a version: deploying from there
            # would freeze a new version every time that version's code is loaded.
            raise KitaruUsageError(
                f"{self.name}.deploy() ran while kitaru imported the flow's code to run it; put "
                'it under `if __name__ == "__main__":` so importing the file deploys nothing.'
            )
        runtime = get_runtime(stack or self.stack)
        record, _ = blocking(
            adeploy,
            runtime,
            self,
            tag=tag,
            weight=weight,
            image=image or (self.image.base_image if self.image else None),
            message=message,
        )
        from kitaru.client import KitaruClient

        return Deployments(KitaruClient(runtime)).get(f"{record.flow}:{record.version}")

    def invoke(
        self,
        *args: Any,
        tag: str = "default",
        execution_id: str | None = None,
        stack: str | None = None,
        **kwargs: Any,
    ) -> FlowHandle:
        """Run this flow's *deployed* code (the version ``tag`` points at; on ``default``,
        weighted tags take their share, sticky per ``execution_id``), not the code in this
        process, blocking until it finishes or waits. ``execution_id`` makes it idempotent."""
        if _skipped(self, "invoke"):
            return SkippedFlowHandle()
        from kitaru.deployments import ainvoke
        from kitaru.errors import KitaruError

        runtime = get_runtime(stack or self.stack)
        exec_id, outcome = blocking(
            ainvoke, runtime, self.name, args, kwargs, tag=tag, execution_id=execution_id
        )
        if outcome is not None:
            outcome.raise_interrupt()
            if isinstance(outcome.error, KitaruError):
                raise outcome.error
        return FlowHandle(exec_id, runtime, outcome)

    def replay(
        self,
        exec_id: str,
        from_: str,
        overrides: dict[str, Any] | None = None,
        args: dict[str, Any] | None = None,
        **flow_inputs: Any,
    ) -> FlowHandle:
        """Re-run execution ``exec_id`` from call ``from_`` as a new, linked execution.

        Calls before ``from_`` (a checkpoint name, a call id like ``name:3``, or a wait name)
        reuse the original's outputs and answers without running; ``from_`` and everything after
        run again. ``overrides`` replace reused outputs or answers by call id (or
        ``checkpoint.<name>``); ``args``, or keyword arguments, replace flow arguments by name.
        Bad requests raise before anything is written.
        """
        from .replay import merge_flow_inputs

        args = merge_flow_inputs(args, flow_inputs)
        if _skipped(self, "replay"):
            return SkippedFlowHandle()
        runtime = get_runtime(self.stack)
        original = runtime.state.get_execution(exec_id)
        if original is None:
            raise KitaruNotFoundError(f"no execution {exec_id!r}. List them with `kitaru executions list`.")
        if original.target != self.target and original.flow != self.name:
            raise KitaruUsageError(
                f"execution {exec_id} ran flow {original.flow!r}, not {self.name!r}; replay it "
                f"with `kitaru executions replay {exec_id} --from ...`."
            )
        record, outcome = blocking(Runner(runtime).replay, self, original, from_, overrides, args)
        outcome.raise_interrupt()
        if isinstance(outcome.error, KitaruError):
            raise outcome.error
        return FlowHandle(record.id, runtime, outcome)


def _elsewhere(runtime: Runtime) -> Orchestrator | None:
    """The orchestrator of the runtime's stack when it runs executions outside this process (a
    Kubernetes Job); None when they are driven here (the local stack, a runtime built directly)."""
    if runtime.stack is None:
        return None
    from kitaru.local_stack import LocalOrchestrator
    from kitaru.stack import orchestrator_of

    orchestrator = orchestrator_of(runtime.stack)
    return None if isinstance(orchestrator, LocalOrchestrator) else orchestrator


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(
    *,
    name: str | None = None,
    stack: str | None = None,
    retries: int | None = None,
    cache: bool | None = None,
    image: ImageInput | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    stack: str | None = None,
    retries: int | None = None,
    cache: bool | None = None,
    image: ImageInput | None = None,
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function a durable flow: run it with ``.run()`` (sync) or ``await .start()``.

    The flow's inputs, every checkpoint output, every wait answer and its result are journaled, so
    a crashed or waiting execution resumes by re-running the body and replaying the journal.

    ``stack``: the configured stack its executions run on unless ``run(stack=...)`` names
    another. ``retries``: a failed execution re-runs from its journal (completed checkpoints
    are not run again) up to that many times before it is ``failed``. ``cache``: the default of
    its checkpoints' ``cache=`` (:mod:`kitaru.cache`). ``image``: the job image on remote stacks
    (Kubernetes, ECS, Cloud Run), over the stack's own, recorded with each execution: a name, or
    :class:`kitaru.ImageSettings` (or a dict of its fields). Unset options fall back to
    ``kitaru.configure()``, then ``KITARU_RETRIES``/``KITARU_CACHE``/``KITARU_IMAGE``, then the
    project's ``[tool.kitaru]``; ``.run(retries=, cache=, image=)`` overrides all of them.
    """
    options: dict[str, Any] = {
        "name": name,
        "stack": stack,
        "retries": retries,
        "cache": cache,
        "image": image,
    }
    if fn is not None:
        return Flow(fn, **options)
    return lambda f: Flow(f, **options)
