"""kitaru's errors: one tree, rooted at :class:`KitaruError`.

Every message says what happened, why, and the next thing to run::

    KitaruError
    ├── KitaruUsageError            the API was called in a way that cannot work
    │   ├── KitaruNotInFlowError    a flow-only call was made outside a running flow
    │   └── KitaruNotAHandleError   0.18 code called .load() on a checkpoint's value (an AttributeError)
    ├── KitaruConfigError           a setting, stack or plugin is missing or wrong
    │   └── KitaruMissingDependencyError   an optional extra is not installed
    ├── KitaruSerializationError    a value cannot be stored or loaded back
    ├── KitaruStoreError            the state or artifact store failed
    │   ├── KitaruConflictError     a create-only write met an existing, different record
    │   └── KitaruLeaseError        another runner drives the execution
    ├── KitaruNotFoundError         no execution, wait or artifact has that id
    ├── KitaruStateError            the operation does not fit the execution's state
    ├── KitaruWaitValidationError   a wait answer does not match the wait's schema
    ├── KitaruWaitTimeoutError      a wait's timeout passed without an answer
    ├── KitaruWaitAborted           someone aborted a wait instead of answering it (exit code 9)
    ├── KitaruTimeoutError          waiting on a handle took longer than asked
    ├── KitaruLLMError              a model provider call failed (kitaru.llm, adapters)
    │   ├── KitaruLLMAuthError      the provider refused the credentials
    │   ├── KitaruLLMBadRequestError    the provider rejected the request itself
    │   ├── KitaruLLMRateLimitError the provider rate-limited the call (after retries)
    │   └── KitaruLLMTimeoutError   the provider did not answer in time (after retries)
    └── KitaruExecutionError        an execution failed or was cancelled
        ├── KitaruUserCodeError     ... because the flow's or a checkpoint's own code raised
        ├── KitaruDivergenceError   the flow's code no longer matches its journal
        └── KitaruExecutionCancelledError

Kitaru 0.18's other names are the same classes: ``KitaruContextError`` is
``KitaruNotInFlowError``, ``KitaruBackendError`` and ``KitaruLogRetrievalError`` are
``KitaruStoreError``, and ``KitaruRuntimeError`` is ``KitaruError``.

Control flow that must unwind a flow body (suspension on a wait, cancellation) uses private
``BaseException`` subclasses in ``kitaru._engine``, so a user's ``except Exception:`` cannot swallow it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "FailureOrigin",
    "KitaruBackendError",
    "KitaruConfigError",
    "KitaruConflictError",
    "KitaruContextError",
    "KitaruDivergenceError",
    "KitaruError",
    "KitaruExecutionCancelledError",
    "KitaruExecutionError",
    "KitaruLLMAuthError",
    "KitaruLLMBadRequestError",
    "KitaruLLMError",
    "KitaruLLMRateLimitError",
    "KitaruLLMTimeoutError",
    "KitaruLeaseError",
    "KitaruLogRetrievalError",
    "KitaruMissingDependencyError",
    "KitaruNotAHandleError",
    "KitaruNotFoundError",
    "KitaruNotInFlowError",
    "KitaruRuntimeError",
    "KitaruSerializationError",
    "KitaruStateError",
    "KitaruStoreError",
    "KitaruTimeoutError",
    "KitaruUsageError",
    "KitaruUserCodeError",
    "KitaruWaitAborted",
    "KitaruWaitTimeoutError",
    "KitaruWaitValidationError",
]


class FailureOrigin(StrEnum):
    """Where a failure came from, as ``Execution.failure.origin`` reports it."""

    USER_CODE = "user_code"
    """The flow's or a checkpoint's own code raised."""
    RUNTIME = "runtime"
    """kitaru refused or could not do something (a bad answer, a value it cannot store...)."""
    BACKEND = "backend"
    """The state or artifact store failed."""
    DIVERGENCE = "divergence"
    """The flow's code no longer matches its journal (:class:`KitaruDivergenceError`)."""
    UNKNOWN = "unknown"
    """No exception was recorded (e.g. a journal written before failures were recorded)."""


class KitaruError(Exception):
    """Raised for every error kitaru itself reports; catch this to catch them all.

    ``exit_code`` is what the CLI exits with when the error reaches it.
    """

    exit_code = 1


class KitaruUsageError(KitaruError):
    """Raised when the API is called in a way that cannot work."""

    exit_code = 2


class KitaruNotInFlowError(KitaruUsageError):
    """Raised when a call that needs a running flow is made outside one."""


class KitaruNotAHandleError(KitaruUsageError, AttributeError):
    """Raised when flow code treats a checkpoint's return value as a handle (``.load()``, as code
    written for Kitaru 0.18 does): inside a flow a checkpoint call returns the value itself.
    ``checkpoint`` names the call when it is known. It is an :class:`AttributeError` too, so
    code that caught the original error still catches it."""

    def __init__(self, message: str, *, checkpoint: str | None = None, attribute: str = "load") -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.attribute = attribute
        self.name = attribute  # AttributeError's own field: the attribute that was missing


class KitaruConfigError(KitaruError):
    """Raised when a setting, stack or plugin is missing or invalid."""

    exit_code = 3


class KitaruMissingDependencyError(KitaruConfigError, ImportError):
    """Raised when an optional dependency is needed but its extra is not installed."""


class KitaruSerializationError(KitaruError):
    """Raised when a value cannot be serialized, or stored bytes cannot be loaded back."""


class KitaruStoreError(KitaruError):
    """Raised when the state store or artifact store fails."""

    exit_code = 4


class KitaruConflictError(KitaruStoreError):
    """Raised when a create-only write finds a different record already there."""


class KitaruLeaseError(KitaruStoreError):
    """Raised when another live runner holds the execution's lease."""


class KitaruNotFoundError(KitaruError, LookupError):
    """Raised when no execution, wait or artifact matches the id given (a ``LookupError``, as
    the original Kitaru's ``executions.latest()`` raised)."""

    exit_code = 5


class KitaruStateError(KitaruError):
    """Raised when an operation does not fit the execution's current state."""

    exit_code = 6


class KitaruWaitValidationError(KitaruError):
    """Raised when a wait's answer does not validate against the wait's schema."""

    exit_code = 8


class KitaruWaitTimeoutError(KitaruError):
    """Raised inside a flow when a wait's timeout passed with no answer."""


class KitaruWaitAborted(KitaruError):
    """Raised inside a flow when its wait was aborted (``kitaru executions input --abort``);
    ``reason`` is what the person who aborted it gave. Uncaught, it fails the execution, and a
    CLI command that drove it exits with code 9."""

    exit_code = 9

    def __init__(self, message: str, *, wait: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.wait = wait
        self.reason = reason


class KitaruTimeoutError(KitaruError):
    """Raised when waiting on a flow handle takes longer than the timeout given."""


class KitaruLLMError(KitaruError):
    """Raised when a model provider call fails; ``status`` is the HTTP status, if there was one."""

    def __init__(self, message: str, *, provider: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status


class KitaruLLMAuthError(KitaruLLMError):
    """Raised when the provider refuses the API key (missing, wrong, or without access)."""


class KitaruLLMBadRequestError(KitaruLLMError):
    """Raised when the provider rejects the request itself (unknown model, bad parameters)."""


class KitaruLLMRateLimitError(KitaruLLMError):
    """Raised when the provider still rate-limits the call after kitaru's retries."""


class KitaruLLMTimeoutError(KitaruLLMError):
    """Raised when the provider still does not answer in time after kitaru's retries."""


class KitaruExecutionError(KitaruError):
    """Raised when a handle's execution failed; ``error`` holds the recorded failure, ``status``
    the execution's final status and ``failure_origin`` whose failure it was (as in 0.18)."""

    def __init__(
        self,
        message: str,
        *,
        exec_id: str | None = None,
        error: str | None = None,
        status: str | None = None,
        failure_origin: FailureOrigin | None = None,
    ) -> None:
        super().__init__(message)
        self.exec_id = exec_id
        self.error = error
        self.status = status
        self.failure_origin = failure_origin


class KitaruUserCodeError(KitaruExecutionError):
    """Raised when a handle's execution failed because the flow's or a checkpoint's own code
    raised; that exception is its ``__cause__`` when the flow ran in this process."""


class KitaruDivergenceError(KitaruExecutionError):
    """Raised when a resumed flow calls something other than what its journal recorded."""

    exit_code = 7

    def __init__(self, message: str, *, exec_id: str | None = None) -> None:
        super().__init__(message, exec_id=exec_id, status="failed", failure_origin=FailureOrigin.DIVERGENCE)


class KitaruExecutionCancelledError(KitaruExecutionError):
    """Raised when a handle's execution was cancelled."""


# Kitaru 0.18's names for the same failures (one tree: these are the classes above).
KitaruContextError = KitaruNotInFlowError
KitaruBackendError = KitaruStoreError
KitaruLogRetrievalError = KitaruStoreError
KitaruRuntimeError = KitaruError
