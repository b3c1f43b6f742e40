"""The editor behind ``kitaru stack set/create/delete``: it changes the user file with tomlkit, which
keeps the file's comments, blank lines and layout around what it edits.

Placement follows how people read a config file: a new ``active_stack`` goes above the first table
and above the comment block that introduces that table; a deleted ``[stacks.NAME]`` takes the comment
block right above its header with it. After an edit the text is parsed again with :mod:`tomllib` and
compared with the data the edit meant to write; if they differ (a layout tomlkit cannot edit
faithfully), the file is written afresh from the data and the caller is told its comments went.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kitaru.errors import KitaruConfigError
from kitaru.stack_config._files import read_config_file, user_config_path
from kitaru.stack_config._plugins import stack_type, validate_stack_keys
from kitaru.stack_config._resolve import StackConfig, resolve_stack, unknown_stack
from kitaru.stack_config._settings import DEFAULT_STACK, load_settings

if TYPE_CHECKING:
    from tomlkit import TOMLDocument
    from tomlkit.items import Item, Key

__all__ = ["create_stack", "delete_stack", "set_active_stack"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

Body = list[tuple["Key | None", "Item"]]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def _edit_user_file(expected: dict[str, Any], edit: Callable[[TOMLDocument], None]) -> tuple[Path, bool]:
    """Apply ``edit`` to the user file's tomlkit document and write it back. Returns the path and
    whether the file had to be rewritten from data (losing its comments)."""
    import tomlkit

    path = user_config_path()
    current = read_config_file(path)
    document = tomlkit.parse(current.text) if current else tomlkit.document()
    try:
        edit(document)
        text = document.as_string()
        # An edit at the end leaves the blank lines that separated what it removed.
        text = text.rstrip("\n") + "\n" if text.strip() else ""
        kept = tomllib.loads(text) == expected
    except (tomllib.TOMLDecodeError, tomlkit.exceptions.TOMLKitError):
        kept = False
    if not kept:
        text = tomlkit.dumps(expected)
    _write_atomic(path, text)
    return path, not kept


def _user_data() -> dict[str, Any]:
    current = read_config_file(user_config_path())
    data: dict[str, Any] = json.loads(json.dumps(current.data)) if current else {}
    return data


def _is_table(item: Any) -> bool:
    from tomlkit.items import AoT, Table

    return isinstance(item, Table | AoT)


def _drop_comments_above(body: Body, end: int) -> None:
    """Remove the comment lines right above ``body[end]`` (no blank line between). When the item
    above is a table, they are the trailing lines of that table's body (that is where tomlkit
    keeps the comments between two tables)."""
    from tomlkit.items import Comment, Null, Table

    at = end
    while at > 0:
        item = body[at - 1][1]
        if isinstance(item, Null):  # what an earlier removal left
            at -= 1
        elif isinstance(item, Comment):
            # Replacing with Null is how tomlkit itself removes an item: indices stay valid.
            body[at - 1] = (None, Null())
            at -= 1
        elif isinstance(item, Table):
            _drop_comments_above(item.value.body, len(item.value.body))
            return
        else:
            return


def _set_top_level(document: TOMLDocument, key: str, value: Any) -> None:
    """Set a top-level key; a new one goes above the first table and above its comment block."""
    import tomlkit
    from tomlkit.items import Comment, Whitespace

    if key in document:
        document[key] = value
        return
    body = document.body
    first = next((i for i, (_, item) in enumerate(body) if _is_table(item)), None)
    if first is None:
        document[key] = value
        return
    at = first
    while at > 0 and isinstance(body[at - 1][1], Comment):
        at -= 1
    # tomlkit has no public insert at a position; _insert_at is what its own append uses.
    item = tomlkit.item(value)
    document._insert_at(at, key, item)
    item.trivia.trail = "\n\n"  # a blank line between it and the table (or comment) below
    if at > 0 and not isinstance(body[at - 1][1], Whitespace):
        item.trivia.indent = "\n"  # and one above, after what was there before


def set_active_stack(name: str) -> tuple[Path, bool]:
    """Make ``name`` the active stack in the user file. It must be a known stack."""
    settings = load_settings()
    if name not in settings.known():
        raise unknown_stack(name, settings, "kitaru stack set")
    data = _user_data()
    data["active_stack"] = name
    return _edit_user_file(data, lambda document: _set_top_level(document, "active_stack", name))


def _add_stack(document: TOMLDocument, name: str, table: Mapping[str, Any]) -> None:
    import tomlkit
    from tomlkit.items import InlineTable

    stacks = document.get("stacks")
    if stacks is None:
        stacks = tomlkit.table(is_super_table=True)
        document["stacks"] = stacks
    new: Any = tomlkit.inline_table() if isinstance(stacks, InlineTable) else tomlkit.table()
    for key, value in table.items():
        try:
            new[key] = value
        except (TypeError, ValueError) as exc:
            raise KitaruConfigError(f"cannot write {key} = {value!r} to a TOML file: {exc}.") from None
    stacks[name] = new


def create_stack(
    name: str, type_name: str, options: Mapping[str, Any], *, activate: bool = False
) -> tuple[StackConfig, bool]:
    """Declare stack ``name`` of type ``type_name`` in the user file, after checking the type is
    installed and accepts ``options``; ``activate`` also makes it the active stack. Returns the
    stack and whether the file had to be rewritten without its comments."""
    if not _NAME.match(name):
        raise KitaruConfigError(
            f"invalid stack name {name!r}: use letters, digits, '-' and '_', starting with a letter "
            "or a digit."
        )
    settings = load_settings()
    if name in settings.stacks:
        raise KitaruConfigError(
            f"stack {name!r} already exists ({settings.where(name)}); delete it first with "
            f"`kitaru stack delete {name}`, or pick another name."
        )
    cls = stack_type(type_name)
    checked = validate_stack_keys(
        cls, dict(options), stack_name=name, source_of=lambda key: f"--{key.replace('_', '-')}"
    )
    data = _user_data()
    table = {"type": type_name, **checked}
    data.setdefault("stacks", {})[name] = table
    if activate:
        data["active_stack"] = name

    def edit(document: TOMLDocument) -> None:
        _add_stack(document, name, table)
        if activate:
            _set_top_level(document, "active_stack", name)

    _, rewritten = _edit_user_file(data, edit)
    return resolve_stack(name), rewritten


def _remove_stack(document: TOMLDocument, name: str) -> None:
    """Remove ``stacks.NAME`` with the comment block right above its ``[stacks.NAME]`` header."""
    from tomlkit.items import Table

    stacks = document["stacks"]
    if isinstance(stacks, Table) and _is_table(stacks.item(name)):
        body = stacks.value.body
        at = next(i for i, (key, _) in enumerate(body) if key is not None and key.key == name)
        if at == 0 and stacks.is_super_table():
            # The first [stacks.NAME] of an implicit [stacks]: its comments are the document's.
            top = document.body
            _drop_comments_above(top, next(i for i, (_, item) in enumerate(top) if item is stacks))
        else:
            _drop_comments_above(body, at)
    del stacks[name]
    if not stacks:
        del document["stacks"]


def delete_stack(name: str) -> tuple[Path, bool]:
    """Remove stack ``name`` from the user file. The active stack cannot be deleted."""
    settings = load_settings()
    data = _user_data()
    path = user_config_path()
    if name not in data.get("stacks", {}):
        if name == DEFAULT_STACK and name not in settings.stacks:
            raise KitaruConfigError(
                f"the built-in {DEFAULT_STACK!r} stack cannot be deleted: it is kitaru's default "
                "(state and artifacts under KITARU_HOME) and is there when no other stack is. "
                "Use another one with `kitaru stack set NAME`."
            )
        if name in settings.stacks:
            raise KitaruConfigError(
                f"stack {name!r} is declared in {settings.where(name)}, not in the user file {path}: "
                "edit that file to remove it."
            )
        raise KitaruConfigError(
            f"unknown stack {name!r}; stacks in the user file {path}: "
            f"{', '.join(sorted(data.get('stacks', {}))) or 'none'}."
        )
    if name == settings.active_stack:
        raise KitaruConfigError(
            f"stack {name!r} is the active stack (from {settings.active_source}); switch first, "
            f"e.g. `kitaru stack set {DEFAULT_STACK}`, then delete it."
        )
    del data["stacks"][name]
    if not data["stacks"]:
        del data["stacks"]
    stale_active = data.get("active_stack") == name
    if stale_active:
        del data["active_stack"]

    def edit(document: TOMLDocument) -> None:
        _remove_stack(document, name)
        if stale_active:
            del document["active_stack"]

    return _edit_user_file(data, edit)
