"""A stack as configured: the merged settings of one stack, checked against its stack type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kitaru.errors import KitaruConfigError
from kitaru.stack_config._files import user_config_path
from kitaru.stack_config._plugins import STACK_NAMESPACE, installed, stack_type, validate_stack_keys
from kitaru.stack_config._settings import DEFAULT_STACK, Settings, load_settings

__all__ = ["StackConfig", "list_stacks", "resolve_stack", "unknown_stack"]


@dataclass(frozen=True, slots=True)
class StackConfig:
    """A stack as configured: its name, type, keys, and where each came from."""

    name: str
    type: str
    options: dict[str, Any]
    """The stack's keys, minus ``type``, validated against the stack type."""
    sources: dict[str, str]
    """Key (``type`` included) to where its value came from."""
    declared_in: str
    """The file (and line) declaring the stack, or ``default``."""
    active: bool


def unknown_stack(name: str, settings: Settings, via: str) -> KitaruConfigError:
    """The error for a stack name no source declares, listing the known ones."""
    files = (
        ", ".join(str(c.path) for c in settings.files) or f"none yet (the user file is {user_config_path()})"
    )
    return KitaruConfigError(
        f"unknown stack {name!r} ({via}); known stacks: {', '.join(settings.known())}. Declare it in a "
        f"config file (files read: {files}) or with `kitaru stack create {name} --type TYPE`."
    )


def resolve_stack(name: str | None = None, /, **options: Any) -> StackConfig:
    """The configuration of stack ``name`` (default: the active stack), merged from every source
    and validated against its stack type; ``options`` (call arguments) override its keys."""
    settings = load_settings()
    chosen = name or settings.active_stack
    via = "call argument" if name else f"active stack, from {settings.active_source}"
    table = settings.stacks.get(chosen)
    if table is None:
        if chosen == settings.active_stack and "type" in settings.overrides:
            # Declared by the environment alone (KITARU_STACK + KITARU_STACK__TYPE and its keys):
            # how a remote job (a Kubernetes Job) gets its stack without any config file.
            table = {}
        elif chosen != DEFAULT_STACK:
            raise unknown_stack(chosen, settings, via)
        else:
            table = {"type": DEFAULT_STACK}
    merged = dict(table)
    active = chosen == settings.active_stack
    if active:
        merged.update(settings.overrides)
    merged.update(options)

    def source_of(key: str) -> str:
        if key in options:
            return "call argument"
        return settings.source_of(chosen, key)

    type_name = merged.pop("type", None)
    if not isinstance(type_name, str) or not type_name:
        raise KitaruConfigError(
            f"{settings.where(chosen)}: stack {chosen!r} has no 'type' key; add e.g. type = \"local\" "
            f"(installed stack types: {', '.join(installed(STACK_NAMESPACE)) or 'none'})."
        )
    cls = stack_type(type_name, where=f"{source_of('type')}: stack {chosen!r}")
    checked = validate_stack_keys(cls, merged, stack_name=chosen, source_of=source_of)
    return StackConfig(
        name=chosen,
        type=type_name,
        options=checked,
        sources={key: source_of(key) for key in ("type", *checked)},
        declared_in=settings.where(chosen),
        active=active,
    )


def list_stacks() -> tuple[Settings, list[tuple[str, str | None, str]]]:
    """The merged settings and each known stack as (name, type, where declared), sorted by name."""
    settings = load_settings()
    rows: list[tuple[str, str | None, str]] = []
    for name in settings.known():
        table = settings.stacks.get(name)
        if table is None:
            rows.append((name, DEFAULT_STACK, "default"))
        else:
            type_name = table.get("type")
            if name == settings.active_stack and "type" in settings.overrides:
                type_name = settings.overrides["type"]
            rows.append((name, type_name, settings.where(name)))
    return settings, rows
