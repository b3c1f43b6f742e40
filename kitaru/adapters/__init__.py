"""Agent adapters: make an existing agent durable at the granularity of its model and tool calls.

- :mod:`kitaru.adapters.pydantic_ai` -- wrap a PydanticAI ``Agent`` (extra ``kitaru[pydantic-ai]``).
- :mod:`kitaru.adapters.openai_agents` -- run an OpenAI Agents SDK agent durably
  (extra ``kitaru[openai-agents]``).

Each adapter imports its framework when imported itself; ``import kitaru`` never does. Any other
harness (CrewAI, a hand-written loop) is made durable by calling it inside a ``@checkpoint``.
"""

from __future__ import annotations

__all__: list[str] = []
