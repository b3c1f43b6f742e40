"""Plugins: stack types and artifact stores found through entry points with stevedore, the hint that
says how to install a missing one, and the check of a stack's keys against what its type (and its
artifact store) declare.

Entry point namespaces: ``kitaru.stacks`` (stack types, e.g. ``local``) and ``kitaru.artifact_stores``
(by URI scheme, e.g. ``file``). stevedore and pydantic are imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kitaru._install import install_hint
from kitaru.errors import KitaruConfigError

if TYPE_CHECKING:
    from kitaru.store import ArtifactStore

__all__ = [
    "ARTIFACT_STORE_NAMESPACE",
    "EXTRAS",
    "STACK_NAMESPACE",
    "artifact_store_for_uri",
    "artifact_store_keys",
    "installed",
    "stack_type",
    "validate_stack_keys",
]

STACK_NAMESPACE = "kitaru.stacks"
ARTIFACT_STORE_NAMESPACE = "kitaru.artifact_stores"
#: Stack types that ship as extras of the ``kitaru`` distribution.
EXTRAS = ("aws", "gcp", "azure", "kubernetes")


def installed(namespace: str) -> list[str]:
    """The names registered under an entry point namespace, sorted."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=namespace)})


def _install_hint(type_name: str) -> str:
    if type_name in EXTRAS:
        return f"Install it with `{install_hint(type_name)}`"
    extras = ", ".join(f"[{e}]" for e in EXTRAS)
    return (
        f"Stack types ship as extras of kitaru ({extras}) or as plugins registering a "
        f"`{STACK_NAMESPACE}` entry point"
    )


def stack_type(type_name: str, *, where: str | None = None) -> type[Any]:
    """The class registered for stack type ``type_name`` under the ``kitaru.stacks`` entry points
    (loaded with stevedore, not instantiated)."""
    from stevedore import driver
    from stevedore.exception import NoMatches

    try:
        manager: Any = driver.DriverManager(namespace=STACK_NAMESPACE, name=type_name, invoke_on_load=False)
    except NoMatches:
        names = ", ".join(installed(STACK_NAMESPACE)) or "none"
        prefix = f"{where}: " if where else ""
        raise KitaruConfigError(
            f"{prefix}unknown stack type {type_name!r}; installed stack types: {names}. "
            # not str.capitalize(): it would lowercase the checkout's path inside the hint
            f"{_install_hint(type_name)}."
        ) from None
    cls: type[Any] = manager.driver
    return cls


def artifact_store_for_uri(uri: str, **options: Any) -> ArtifactStore:
    """Open the artifact store rooted at ``uri``, chosen by its scheme (``file``, ``s3``...);
    ``options`` go to the store's factory."""
    from stevedore import driver
    from stevedore.exception import NoMatches

    scheme = uri.partition("://")[0]
    try:
        manager: Any = driver.DriverManager(
            namespace=ARTIFACT_STORE_NAMESPACE,
            name=scheme,
            invoke_on_load=True,
            invoke_args=(uri,),
            invoke_kwds=options,
        )
    except NoMatches:
        names = ", ".join(installed(ARTIFACT_STORE_NAMESPACE)) or "none"
        raise KitaruConfigError(
            f"no artifact store plugin for {scheme}:// URIs (installed: {names}). Install the "
            f"stack that provides it, e.g. `{install_hint(scheme)}`."
        ) from None
    store: ArtifactStore = manager.driver
    return store


def artifact_store_keys(uri: str | None) -> Mapping[str, Any] | None:
    """The keys the artifact store for ``uri`` declares (its factory's ``keys``), or None when it
    declares none or is not installed (then any key is let through to it)."""
    from importlib.metadata import entry_points

    scheme = (uri or "file://").partition("://")[0]
    for ep in entry_points(group=ARTIFACT_STORE_NAMESPACE, name=scheme):
        try:
            factory = ep.load()
        except Exception:
            return None
        keys = getattr(factory, "keys", None)
        return keys if isinstance(keys, Mapping) else None
    return None


_ADAPTERS: dict[Any, Any] = {}


def _check_value(annotation: Any, value: Any) -> tuple[Any, str | None]:
    """Validate ``value`` against ``annotation`` (pydantic, lax: "3" is an int, 3 is not a str)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        adapter = _ADAPTERS[annotation]
    except (KeyError, TypeError):
        adapter = TypeAdapter(annotation)
        try:
            _ADAPTERS[annotation] = adapter
        except TypeError:
            pass
    try:
        return adapter.validate_python(value), None
    except ValidationError as exc:
        error = "; ".join(e["msg"] for e in exc.errors())
    # A list or table from the environment (``KITARU_STACK__SUBNETS='["subnet-1"]'``, what a
    # remote job's worker is given) is JSON text.
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        import json

        try:
            parsed = json.loads(value)
            return adapter.validate_python(parsed), None
        except (ValueError, ValidationError):
            pass
    return value, error


def validate_stack_keys(
    cls: type[Any],
    options: Mapping[str, Any],
    *,
    stack_name: str = "?",
    source_of: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Check a stack's keys against its type: each key the type declares (``cls.keys``) must have a
    value of the declared type; other keys go to the artifact store, which may declare its own
    (its factory's ``keys``); a type that sets ``other_keys = False`` accepts no other key.

    Returns the validated values (``"3"`` from the environment becomes 3 for an ``int`` key).
    ``source_of(key)`` says where a key came from, for the error message.
    """
    declared: Mapping[str, Any] | None = getattr(cls, "keys", None)
    type_name = getattr(cls, "type", cls.__name__)
    if declared is None or not isinstance(declared, Mapping):
        return dict(options)
    store_keys = None
    store_open = bool(getattr(cls, "other_keys", True))
    if store_open:
        store_keys = artifact_store_keys(options.get("artifacts"))
    out: dict[str, Any] = {}
    for key, value in options.items():
        where = source_of(key) if source_of else f"stack {stack_name!r}"
        annotation = declared.get(key)
        if annotation is None and store_keys is not None:
            annotation = store_keys.get(key)
        if annotation is None:
            if store_open and store_keys is None:
                out[key] = value  # an artifact store that declares nothing takes any key
                continue
            accepted = sorted({*declared, *(store_keys or {})})
            raise KitaruConfigError(
                f"{where}: unknown key {key!r} for stack {stack_name!r} of type {type_name!r}; it "
                f"accepts: type, {', '.join(accepted)}. See stacks.example.toml for every key."
            )
        checked, error = _check_value(annotation, value)
        if error:
            raise KitaruConfigError(
                f"{where}: key {key!r} of stack {stack_name!r} has a wrong value {value!r}: {error}."
            )
        if key == "state" and isinstance(checked, str):
            _check_state_uri(cls, checked, where, stack_name)
        out[key] = checked
    return out


def _check_state_uri(cls: type[Any], uri: str, where: str, stack_name: str) -> None:
    """A ``state`` URI must name a state store kitaru can open (a stack type may widen the list
    with a ``state_schemes`` attribute), so a typo fails when the stack is declared, not when a
    flow first runs on it."""
    from kitaru.store.open import STATE_STORE_SCHEMES

    schemes: tuple[str, ...] = tuple(getattr(cls, "state_schemes", STATE_STORE_SCHEMES))
    scheme, sep, _ = uri.partition("://")
    if sep and scheme.lower() in schemes:
        return
    shown = f"{scheme}://..." if sep and "@" in uri else uri  # the URI may hold a password
    raise KitaruConfigError(
        f"{where}: key 'state' of stack {stack_name!r} is {shown!r}, which is no state store "
        f"kitaru supports; supported: {', '.join(s + '://' for s in schemes)} (e.g. "
        "sqlite:////abs/path/kitaru.db or postgresql://user:password@host:5432/db)."
    )
