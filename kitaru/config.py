"""Where kitaru keeps its state, the few settings the core reads from the environment, the
process defaults ``kitaru.configure()`` sets, and the stacks from Python (``kitaru.list_stacks``,
``current_stack``, ``use_stack``, ``create_stack``, ``delete_stack``: the same functions as
``kitaru stack ...``, from :mod:`kitaru.stack_config`)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kitaru.errors import KitaruConfigError, KitaruUsageError

__all__ = [
    "ExecutionOptions",
    "ImageSettings",
    "StackInfo",
    "configure",
    "configured",
    "create_stack",
    "current_stack",
    "delete_stack",
    "home",
    "list_stacks",
    "private_dir",
    "refuse_image_builds",
    "resolve_options",
    "use_stack",
]


def home() -> Path:
    """kitaru's home directory: ``$KITARU_HOME``, else ``$XDG_DATA_HOME/kitaru``, else
    ``~/.local/share/kitaru``. The embedded stack keeps ``kitaru.db`` and ``artifacts/`` here.

    Raises :class:`~kitaru.errors.KitaruConfigError` naming the variable when the path is a file,
    or lies below one, rather than failing later inside a store."""
    explicit = os.environ.get("KITARU_HOME")
    if explicit:
        return _checked(Path(explicit).expanduser(), "KITARU_HOME")
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return _checked(Path(xdg).expanduser() / "kitaru", "XDG_DATA_HOME")
    return _checked(Path.home() / ".local" / "share" / "kitaru", "HOME")


def _checked(path: Path, variable: str) -> Path:
    # The nearest existing ancestor must be a directory, or nothing can ever be created there.
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        fix = f"Point {variable} at a directory" if variable == "KITARU_HOME" else "Set KITARU_HOME"
        where = "is a file" if probe == path.absolute() else f"lies below the file {probe}"
        raise KitaruConfigError(
            f"kitaru's home {path.absolute()} (from ${variable}) {where}; kitaru keeps its database "
            f"and artifacts in a directory there. {fix}, e.g. `export KITARU_HOME=~/kitaru-home`."
        )
    return path


def private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents as directories only their owner can enter (0700),
    whatever the umask. Existing directories keep their mode: a home the user chose to share
    stays shared. Raises OSError like ``mkdir``."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # another process made it meanwhile (and sets its mode)
        # mkdir's mode passes through the umask, which may also drop the owner's bits.
        os.chmod(directory, 0o700)


def env_float(name: str, default: float) -> float:
    """A float setting from the environment, ignoring values that do not parse."""
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


# -- images (ImageSettings) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageSettings:
    """The image and environment of an execution's remote jobs (``@flow(image=...)``,
    ``.run(image=...)``, ``kitaru.configure(image=...)``, ``KITARU_IMAGE``, ``[tool.kitaru.image]``).

    kitaru builds no images (it runs where there is no Docker): every field either does what it
    says here or is refused when an execution would need it, never dropped.

    - ``base_image``: the image the execution's jobs run (over the stack's ``image``);
    - ``environment``: variables set in the job before the flow's code is imported (values are
      recorded with the execution: put credentials in ``secret_environment_from``);
    - ``secret_environment_from``: names of kitaru secrets (``kitaru secrets set``) whose values
      the job exports (a secret holding a JSON object exports each key; any other value is
      exported under the secret's name); only the names are recorded;
    - ``requirements``: checked in the job before the flow runs: a job whose image lacks one
      refuses to run (exit 12) naming it, instead of failing at the first import;
    - ``dockerfile``, ``build_context_root``, ``apt_packages``,
      ``replicate_local_python_environment``, ``image_tag``, ``target_repository``, ``platform``,
      ``user``: image *builds*; a remote submission that carries one raises
      :class:`~kitaru.errors.KitaruUsageError` saying to build the image yourself and name it in
      ``base_image``.

    On the local stack there is no job: the settings are recorded with the execution only."""

    base_image: str | None = None
    requirements: list[str] | None = None
    dockerfile: str | None = None
    build_context_root: str | None = None
    environment: dict[str, str] | None = None
    secret_environment_from: list[str] | None = None
    apt_packages: list[str] | None = None
    replicate_local_python_environment: bool | None = None
    image_tag: str | None = None
    target_repository: str | None = None
    user: str | None = None
    platform: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "base_image",
            "dockerfile",
            "build_context_root",
            "image_tag",
            "target_repository",
            "user",
            "platform",
        ):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str) or not value.strip():
                    raise KitaruUsageError(
                        f"ImageSettings({name}=...) takes a non-empty string, got {value!r}."
                    )
                object.__setattr__(self, name, value.strip())
        for name in ("requirements", "secret_environment_from", "apt_packages"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
                    raise KitaruUsageError(
                        f"ImageSettings({name}=...) takes a list of non-empty strings, got {value!r}."
                    )
                object.__setattr__(self, name, [v.strip() for v in value])
        if self.environment is not None:
            if not isinstance(self.environment, dict) or not all(
                isinstance(k, str) and k.strip() for k in self.environment
            ):
                raise KitaruUsageError(
                    f"ImageSettings(environment=...) takes a dict of variable names to values, got "
                    f"{self.environment!r}."
                )
            object.__setattr__(self, "environment", {k.strip(): str(v) for k, v in self.environment.items()})
        flag = self.replicate_local_python_environment
        if flag is not None and not isinstance(flag, bool):
            raise KitaruUsageError(
                f"ImageSettings(replicate_local_python_environment=...) takes True or False, got {flag!r}."
            )

    #: Fields that describe building an image, which kitaru does not do.
    BUILD_FIELDS = (
        "dockerfile",
        "build_context_root",
        "apt_packages",
        "replicate_local_python_environment",
        "image_tag",
        "target_repository",
        "platform",
        "user",
    )

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as JSON (what an execution records)."""
        from dataclasses import asdict

        return {k: v for k, v in asdict(self).items() if v is not None}

    def build_fields(self) -> list[str]:
        """The set fields that would need an image build."""
        return [name for name in self.BUILD_FIELDS if getattr(self, name) is not None]

    def merged(self, override: ImageSettings | None) -> ImageSettings:
        """These settings under ``override``: each field it sets wins; ``environment`` merges."""
        if override is None:
            return self
        values = {**self.to_dict(), **override.to_dict()}
        if self.environment and override.environment:
            values["environment"] = {**self.environment, **override.environment}
        return ImageSettings(**values)


def image_settings(value: Any, where: str = "image") -> ImageSettings | None:
    """``value`` as :class:`ImageSettings`: a string is a ``base_image``, a mapping holds the
    fields (``parent_image`` is read as ``base_image``), None is None."""
    if value is None or isinstance(value, ImageSettings):
        return value
    if isinstance(value, str):
        if not value.strip():
            raise KitaruUsageError(f"{where}: an image name cannot be empty.")
        return ImageSettings(base_image=value.strip())
    if isinstance(value, dict):
        fields = dict(value)
        if "parent_image" in fields and "base_image" not in fields:
            fields["base_image"] = fields.pop("parent_image")
        from dataclasses import fields as dataclass_fields

        known = {f.name for f in dataclass_fields(ImageSettings)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise KitaruUsageError(
                f"{where}: unknown image setting(s) {', '.join(unknown)}; ImageSettings has "
                f"{', '.join(sorted(known))}."
            )
        return ImageSettings(**fields)
    raise KitaruUsageError(
        f"{where} takes an image name, a dict of image settings or kitaru.ImageSettings, got {value!r}."
    )


def refuse_image_builds(image: ImageSettings, flow: str) -> None:
    """Raise when ``image`` asks for an image build (kitaru builds none), naming the fields."""
    wanted = image.build_fields()
    if wanted:
        raise KitaruUsageError(
            f"flow {flow!r} runs on a remote stack with image settings {', '.join(wanted)}, which "
            "describe building an image; kitaru does not build images. Build it yourself (with "
            "those packages, user and platform), push it, and name it instead: "
            '`image=kitaru.ImageSettings(base_image="REGISTRY/IMAGE:TAG")`.'
        )


# -- process defaults (kitaru.configure) ------------------------------------------------------

_UNSET: Any = object()
_configured: dict[str, Any] = {}
_configure_lock = threading.Lock()


class Configured(dict[str, Any]):
    """The defaults ``configure()`` set: a dict, whose keys read as attributes too
    (``kitaru.configure(retries=2).retries``); a key never set reads as None."""

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self.get(key)


def configure(
    *,
    stack: Any = _UNSET,
    model: Any = _UNSET,
    allow_pickle: Any = _UNSET,
    cache: Any = _UNSET,
    retries: Any = _UNSET,
    image: Any = _UNSET,
    project: Any = _UNSET,
) -> Configured:
    """Set defaults for this process; each argument given replaces its default, ``None`` removes it.

    - ``stack``: the stack flows run on and clients read when no call names one; above
      ``KITARU_STACK`` and the config files' ``active_stack`` (code that says which stack it wants
      is more specific than the environment), below a call's own ``stack=``. It must be a known
      stack. Runtimes already opened on another stack stay open for the handles using them.
    - ``model``: the model ``kitaru.llm()`` uses when a call names none; above ``KITARU_MODEL``
      and the models file's default.
    - ``allow_pickle``: whether values may be pickled and unpickled; above ``KITARU_ALLOW_PICKLE``.
    - ``cache``, ``retries``, ``image``: the defaults of every flow's ``cache=``, ``retries=``
      and ``image=`` (a string, a dict or :class:`ImageSettings`); a flow's decorator and a run's
      own arguments are above them, ``KITARU_CACHE``, ``KITARU_RETRIES``, ``KITARU_IMAGE`` and the
      project's ``[tool.kitaru]`` below (see :func:`resolve_options`).
    - ``project``: refused: kitaru has no projects (a stack is the whole scope).

    Returns the defaults now set. Nothing is written anywhere: the next process starts without
    them (``kitaru stack set`` and ``kitaru model register --default`` persist)."""
    with _configure_lock:
        if project is not _UNSET and project is not None:
            raise KitaruUsageError(
                "configure(project=...): kitaru has no projects; a stack holds everything its "
                "executions record. Drop `project=` and pick the stack with `configure(stack=...)`."
            )
        if cache is not _UNSET and cache is not None and not isinstance(cache, bool):
            raise KitaruUsageError(f"configure(cache=...) takes True or False, got {cache!r}.")
        if retries is not _UNSET and retries is not None:
            _check_retries(retries, "configure(retries=...)")
        checked_image = image_settings(image, "configure(image=...)") if image is not _UNSET else _UNSET
        if stack is not _UNSET:
            if stack is not None:
                if not isinstance(stack, str) or not stack:
                    raise KitaruUsageError(f"configure(stack=...) takes a stack name, got {stack!r}.")
                from kitaru.stack_config import load_settings
                from kitaru.stack_config._resolve import unknown_stack

                settings = load_settings()
                if stack not in settings.known() and stack != settings.active_stack:
                    raise unknown_stack(stack, settings, "kitaru.configure()")
            _set("stack", stack)
            from kitaru._engine.runtime import release_default_runtime

            release_default_runtime()
        if model is not _UNSET:
            if model is not None and (not isinstance(model, str) or not model):
                raise KitaruUsageError(
                    f"configure(model=...) takes an alias or provider/model, got {model!r}."
                )
            _set("model", model)
        if allow_pickle is not _UNSET:
            if allow_pickle is not None and not isinstance(allow_pickle, bool):
                raise KitaruUsageError(
                    f"configure(allow_pickle=...) takes True or False, got {allow_pickle!r}."
                )
            _set("allow_pickle", allow_pickle)
        if cache is not _UNSET:
            _set("cache", cache)
        if retries is not _UNSET:
            _set("retries", retries)
        if checked_image is not _UNSET:
            _set("image", checked_image)
        return Configured(_configured)


def configured(key: str) -> Any:
    """The value ``configure()`` set for ``key`` (``stack``, ``model``, ``allow_pickle``,
    ``cache``, ``retries``, ``image``), or None."""
    return _configured.get(key)


def _set(key: str, value: Any) -> None:
    if value is None:
        _configured.pop(key, None)
    else:
        _configured[key] = value


def _check_retries(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise KitaruUsageError(f"{where} takes an int >= 0, got {value!r}.")
    return value


# -- an execution's options, resolved -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutionOptions:
    """What one execution runs with, each from the most specific place that sets it; recorded
    with the execution (``metadata["options"]``) so whoever resumes it, anywhere, uses the same."""

    cache: bool
    retries: int
    image: ImageSettings | None
    sources: dict[str, str]
    """Where each option came from: ``run``, ``flow``, ``configure``, ``env`` (with the
    variable), ``pyproject`` (with the file) or ``default``."""

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cache": self.cache, "retries": self.retries, "sources": dict(self.sources)}
        if self.image is not None:
            out["image"] = self.image.to_dict()
        return out


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_options() -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    raw = os.environ.get("KITARU_CACHE", "").strip().lower()
    if raw:
        if raw not in _TRUE | _FALSE:
            raise KitaruConfigError(f"KITARU_CACHE={raw!r} is not a boolean; set it to true or false.")
        out["cache"] = (raw in _TRUE, "env KITARU_CACHE")
    raw = os.environ.get("KITARU_RETRIES", "").strip()
    if raw:
        if not raw.isdigit():
            raise KitaruConfigError(f"KITARU_RETRIES={raw!r} is not an int >= 0; set it to e.g. 2.")
        out["retries"] = (int(raw), "env KITARU_RETRIES")
    raw = os.environ.get("KITARU_IMAGE", "").strip()
    if raw:
        value: Any = raw
        if raw.startswith("{"):
            import json

            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise KitaruConfigError(
                    f"KITARU_IMAGE is neither an image name nor a JSON object of image settings: {exc}."
                ) from None
        try:
            out["image"] = (image_settings(value, "KITARU_IMAGE"), "env KITARU_IMAGE")
        except KitaruUsageError as exc:
            raise KitaruConfigError(str(exc)) from None
    return out


_TABLES: dict[Path, tuple[str, dict[str, Any] | None]] = {}


def _kitaru_table(pyproject: Path) -> dict[str, Any] | None:
    """The ``[tool.kitaru]`` table of a ``pyproject.toml``, parsed again only when its text
    changed: every flow start reads it, and parsing a real project's file cost more than the rest
    of an empty flow's start (reading it is cheap, and unlike a modification time never stale)."""
    import tomllib

    try:
        text = pyproject.read_text()
        cached = _TABLES.get(pyproject)
        if cached is not None and cached[0] == text:
            return cached[1]
        table = tomllib.loads(text).get("tool", {}).get("kitaru")
    except (OSError, tomllib.TOMLDecodeError):
        return None  # not ours to judge: the project's own tools report a broken pyproject.toml
    found = table if isinstance(table, dict) else None
    _TABLES[pyproject] = (text, found)
    return found


def _pyproject_options() -> dict[str, tuple[Any, str]]:
    """``[tool.kitaru]`` of the nearest ``pyproject.toml`` at or above the working directory:
    ``cache``, ``retries`` and the ``[tool.kitaru.image]`` table (``stack`` is refused there:
    the stack comes from ``kitaru stack set`` or ``KITARU_STACK``)."""
    probe = Path.cwd()
    for directory in (probe, *probe.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            break
    else:
        return {}
    table = _kitaru_table(candidate)
    if table is None:
        return {}
    where = f"{candidate} [tool.kitaru]"
    out: dict[str, tuple[Any, str]] = {}
    unknown = sorted(set(table) - {"cache", "retries", "image"})
    if unknown:
        raise KitaruConfigError(
            f"{where}: kitaru reads cache, retries and image there; {', '.join(unknown)} "
            "cannot be set there (the stack comes from `kitaru stack set NAME` or KITARU_STACK). "
            "Remove the key(s)."
        )
    if "cache" in table:
        if not isinstance(table["cache"], bool):
            raise KitaruConfigError(f"{where}: cache must be true or false.")
        out["cache"] = (table["cache"], f"pyproject {candidate}")
    if "retries" in table:
        try:
            out["retries"] = (_check_retries(table["retries"], f"{where} retries"), f"pyproject {candidate}")
        except KitaruUsageError as exc:
            raise KitaruConfigError(str(exc)) from None
    if "image" in table:
        try:
            out["image"] = (image_settings(table["image"], f"{where} image"), f"pyproject {candidate}")
        except KitaruUsageError as exc:
            raise KitaruConfigError(str(exc)) from None
    return out


def resolve_options(flow: dict[str, Any], run: dict[str, Any]) -> ExecutionOptions:
    """An execution's ``cache``, ``retries`` and ``image``: the run's own argument, else the
    flow's decorator, else ``configure()``, else ``KITARU_CACHE``/``KITARU_RETRIES``/
    ``KITARU_IMAGE``, else the project's ``[tool.kitaru]``, else the default (no cache, no
    retries, no image). Images merge field by field down that chain (a run's
    ``image={"environment": ...}`` keeps the flow's ``base_image``). ``flow`` and ``run`` map
    option names to values, None meaning unset."""
    layers: list[tuple[str, dict[str, Any]]] = [
        ("run", run),
        ("flow", flow),
        ("configure", {k: _configured.get(k) for k in ("cache", "retries", "image")}),
    ]
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    lower = _pyproject_options()
    lower_env = _env_options()
    for key in ("cache", "retries"):
        for name, layer in layers:
            if layer.get(key) is not None:
                values[key], sources[key] = layer[key], name
                break
        else:
            found = lower_env.get(key) or lower.get(key)
            if found is not None:
                values[key], sources[key] = found
            else:
                values[key], sources[key] = (False if key == "cache" else 0), "default"
    # Images: lowest first, each more specific layer over it.
    image: ImageSettings | None = None
    image_sources: list[str] = []
    chain: list[tuple[str, Any]] = []
    for value, src in (lower.get("image") or (None, ""), lower_env.get("image") or (None, "")):
        chain.append((src, value))
    for name, layer in reversed(layers):
        chain.append((name, image_settings(layer.get("image"), f"{name} image")))
    for src, value in chain:
        if value is not None:
            image = value if image is None else image.merged(value)
            image_sources.append(src)
    if image_sources:
        sources["image"] = " < ".join(image_sources)
    return ExecutionOptions(
        cache=bool(values["cache"]), retries=int(values["retries"]), image=image, sources=sources
    )


# -- stacks from Python -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackInfo:
    """A configured stack: its name, type, where it is declared, and whether it is active."""

    name: str
    type: str | None
    declared_in: str
    active: bool
    active_source: str | None = None
    """For the active stack: where that choice came from (``kitaru.configure()``,
    ``KITARU_STACK``, a config file's path, or ``default``)."""


def list_stacks() -> list[StackInfo]:
    """Every known stack (the built-in ``local`` and each declared one), by name."""
    from kitaru.stack_config import list_stacks as _list

    settings, rows = _list()
    return [
        StackInfo(
            name,
            type_name,
            where,
            name == settings.active_stack,
            settings.active_source if name == settings.active_stack else None,
        )
        for name, type_name, where in rows
    ]


def current_stack() -> StackInfo:
    """The active stack: the one flows run on when no call names one."""
    from kitaru.stack_config import resolve_stack

    config = resolve_stack()
    from kitaru.stack_config import load_settings

    return StackInfo(config.name, config.type, config.declared_in, True, load_settings().active_source)


def use_stack(name: str) -> StackInfo:
    """Make ``name`` the active stack in the user file, as ``kitaru stack set NAME`` does (every
    later process uses it, unless ``KITARU_STACK`` or ``kitaru.configure(stack=)`` says otherwise);
    this process switches too."""
    from kitaru._engine.runtime import release_default_runtime
    from kitaru.stack_config import set_active_stack

    set_active_stack(name)
    release_default_runtime()
    return current_stack()


def create_stack(name: str, type: str, *, activate: bool = False, **keys: Any) -> StackInfo:
    """Declare stack ``name`` of stack type ``type`` with its ``keys`` in the user file, checked
    against the type, as ``kitaru stack create`` does; ``activate`` also makes it active."""
    from kitaru.stack_config import create_stack as _create

    config, _rewritten = _create(name, type, keys, activate=activate)
    if activate:
        from kitaru._engine.runtime import release_default_runtime

        release_default_runtime()
    return StackInfo(config.name, config.type, config.declared_in, config.active)


def delete_stack(name: str) -> None:
    """Remove stack ``name`` from the user file, as ``kitaru stack delete`` does (not the active
    stack; its state and artifacts are left alone)."""
    from kitaru.stack_config import delete_stack as _delete

    _delete(name)
