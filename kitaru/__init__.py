"""kitaru: durable execution for Python AI agents.

``@flow`` around the agent, ``@checkpoint`` around each durable step: a crashed run resumes without
repeating completed steps, ``wait()`` pauses for a human without holding a process, and every step's
output is a typed artifact. This module is the public API; everything under ``kitaru._engine`` is
private.
"""

from __future__ import annotations

from kitaru import events as events
from kitaru import runtime as runtime
from kitaru._engine.api import aload as aload
from kitaru._engine.api import current_execution_id as current_execution_id
from kitaru._engine.api import load as load
from kitaru._engine.api import log as log
from kitaru._engine.api import save as save
from kitaru._engine.checkpoint import Checkpoint as Checkpoint
from kitaru._engine.checkpoint import checkpoint as checkpoint
from kitaru._engine.flow import AsyncFlowHandle as AsyncFlowHandle
from kitaru._engine.flow import Flow as Flow
from kitaru._engine.flow import FlowHandle as FlowHandle
from kitaru._engine.flow import flow as flow
from kitaru._engine.waits import wait as wait
from kitaru._engine.waits import wait_async as wait_async
from kitaru.client import KitaruClient as KitaruClient
from kitaru.config import ImageSettings as ImageSettings
from kitaru.config import StackInfo as StackInfo
from kitaru.config import configure as configure
from kitaru.config import create_stack as create_stack
from kitaru.config import current_stack as current_stack
from kitaru.config import delete_stack as delete_stack
from kitaru.config import list_stacks as list_stacks
from kitaru.config import use_stack as use_stack
from kitaru.errors import FailureOrigin as FailureOrigin
from kitaru.errors import KitaruBackendError as KitaruBackendError
from kitaru.errors import KitaruConfigError as KitaruConfigError
from kitaru.errors import KitaruConflictError as KitaruConflictError
from kitaru.errors import KitaruContextError as KitaruContextError
from kitaru.errors import KitaruDivergenceError as KitaruDivergenceError
from kitaru.errors import KitaruError as KitaruError
from kitaru.errors import KitaruExecutionCancelledError as KitaruExecutionCancelledError
from kitaru.errors import KitaruExecutionError as KitaruExecutionError
from kitaru.errors import KitaruLeaseError as KitaruLeaseError
from kitaru.errors import KitaruLLMAuthError as KitaruLLMAuthError
from kitaru.errors import KitaruLLMBadRequestError as KitaruLLMBadRequestError
from kitaru.errors import KitaruLLMError as KitaruLLMError
from kitaru.errors import KitaruLLMRateLimitError as KitaruLLMRateLimitError
from kitaru.errors import KitaruLLMTimeoutError as KitaruLLMTimeoutError
from kitaru.errors import KitaruLogRetrievalError as KitaruLogRetrievalError
from kitaru.errors import KitaruMissingDependencyError as KitaruMissingDependencyError
from kitaru.errors import KitaruNotAHandleError as KitaruNotAHandleError
from kitaru.errors import KitaruNotFoundError as KitaruNotFoundError
from kitaru.errors import KitaruNotInFlowError as KitaruNotInFlowError
from kitaru.errors import KitaruRuntimeError as KitaruRuntimeError
from kitaru.errors import KitaruSerializationError as KitaruSerializationError
from kitaru.errors import KitaruStateError as KitaruStateError
from kitaru.errors import KitaruStoreError as KitaruStoreError
from kitaru.errors import KitaruTimeoutError as KitaruTimeoutError
from kitaru.errors import KitaruUsageError as KitaruUsageError
from kitaru.errors import KitaruUserCodeError as KitaruUserCodeError
from kitaru.errors import KitaruWaitAborted as KitaruWaitAborted
from kitaru.errors import KitaruWaitTimeoutError as KitaruWaitTimeoutError
from kitaru.errors import KitaruWaitValidationError as KitaruWaitValidationError
from kitaru.events import ExecutionEvent as ExecutionEvent
from kitaru.events import progress as progress
from kitaru.llm import allm as allm
from kitaru.llm import llm as llm
from kitaru.secrets import secret as secret

__version__ = "0.1.0.dev0"

__all__ = [
    "AsyncFlowHandle",
    "Checkpoint",
    "ExecutionEvent",
    "FailureOrigin",
    "Flow",
    "FlowHandle",
    "ImageSettings",
    "KitaruBackendError",
    "KitaruClient",
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
    "StackInfo",
    "allm",
    "aload",
    "checkpoint",
    "configure",
    "create_stack",
    "current_execution_id",
    "current_stack",
    "delete_stack",
    "flow",
    "list_stacks",
    "llm",
    "load",
    "log",
    "progress",
    "save",
    "secret",
    "use_stack",
    "wait",
    "wait_async",
]
