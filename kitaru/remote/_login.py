"""The login file of ``kitaru login``: the server's URL and an API key, private to its owner.

It lives beside the user configuration (``<config dir>/kitaru/login.json``, 0600 in a 0700
directory); ``KITARU_SERVER`` and ``KITARU_API_KEY`` in the environment take precedence (a job or
CI sets those instead of writing a file)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kitaru.errors import KitaruConfigError

__all__ = ["Login", "api_key_from_env", "current_login", "forget_login", "login_path", "save_login"]


@dataclass(frozen=True, slots=True)
class Login:
    url: str
    key: str
    source: str
    """Where it came from: the login file's path, or ``environment``."""


def login_path() -> Path:
    from kitaru.stack_config._files import user_config_path

    return user_config_path().parent / "login.json"


def current_login() -> Login | None:
    """The server this process talks to, or None (then it uses its stack directly)."""
    url = os.environ.get("KITARU_SERVER", "").strip()
    key = os.environ.get("KITARU_API_KEY", "").strip()
    if url and key:
        return Login(url.rstrip("/"), key, "environment")
    path = login_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise KitaruConfigError(
            f"cannot read the login file {path}: {exc}. Log in again with `kitaru login URL --key KEY`, "
            "or `kitaru logout` to remove it."
        ) from None
    return Login(str(data["url"]).rstrip("/"), str(data["key"]), str(path))


def save_login(url: str, key: str) -> Path:
    from kitaru.config import private_dir

    path = login_path()
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url.rstrip("/"), "key": key}, fh)
    os.chmod(tmp, 0o600)  # O_CREAT's mode passes through the umask; an old file keeps its own
    os.replace(tmp, path)
    return path


def forget_login() -> bool:
    try:
        login_path().unlink()
    except FileNotFoundError:
        return False
    return True


def api_key_from_env(url: str) -> str:
    """The key a stack whose ``state`` is a server URL uses: ``KITARU_API_KEY``, else the login
    file's key when it logs in to the same server."""
    key = os.environ.get("KITARU_API_KEY", "").strip()
    if key:
        return key
    login = current_login()
    if login is not None and login.url == url.rstrip("/"):
        return login.key
    raise KitaruConfigError(
        f"the state store {url} is a kitaru server, and no API key for it is set: export "
        "KITARU_API_KEY=<a key with the runner scope> (create one with `kitaru server keys create "
        "NAME --scope runner`)."
    )
