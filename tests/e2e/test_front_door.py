"""The README's front door on a machine like a user's: a Debian python3 that refuses system-wide
installs (PEP 668), no uv on PATH, as root and as an unprivileged user, from a copy of the checkout.
The command the quickstart prints next must work as written from another directory.

These tests install from the package index (uv, then the runtime's dependencies), so they are slow;
they need Debian's python3 with its EXTERNALLY-MANAGED marker, and root to switch users."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = Path("/usr/bin/python3")


def _pep668_python() -> Path:
    if not DEBIAN_PYTHON.exists():
        pytest.skip("needs Debian's /usr/bin/python3 (apt install python3 python3-pip)")
    stdlib = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not (Path(stdlib) / "EXTERNALLY-MANAGED").exists():
        pytest.skip(f"{DEBIAN_PYTHON} has no PEP 668 marker")
    refused = subprocess.run(
        [DEBIAN_PYTHON, "-m", "pip", "install", "--dry-run", "uv"], capture_output=True, text=True
    )
    if "externally-managed-environment" not in refused.stderr + refused.stdout:
        pytest.skip(f"{DEBIAN_PYTHON} -m pip does not refuse system-wide installs here")
    return DEBIAN_PYTHON


def _copy_checkout(dest: Path) -> Path:
    """The files of this checkout (tracked, and new ones not ignored), as a user's clone has them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if not source.exists():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


@pytest.fixture
def user_home() -> Iterator[Path]:
    # Under /tmp itself (not pytest's private tmp dir) so another user can be given it.
    path = Path(tempfile.mkdtemp(prefix="kitaru-front-door-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_quickstart_then_answer(checkout: Path, env: dict[str, str], as_user: list[str]) -> None:
    run = subprocess.run(
        [*as_user, "./uvw", "run", "--locked", "--no-dev", "examples/quickstart.py", "durable agents"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    match = re.search(r"approve it with:\s+(.+)$", run.stdout, re.MULTILINE)
    assert match, run.stdout
    command = match.group(1)
    # The printed command names this checkout's environment by its full path.
    assert command.startswith(str(checkout / ".venv" / "bin" / "kitaru")), command
    # The quickstart's setup is the runtime, not the development group.
    site = list((checkout / ".venv" / "lib").glob("python3*/site-packages"))
    assert site and not (site[0] / "pytest").exists() and not (site[0] / "moto").exists()

    # As written, from another directory.
    answer = subprocess.run(
        [*as_user, *shlex.split(command)],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    exec_id = command.split("executions input ")[1].split()[0]
    shown = subprocess.run(
        [*as_user, str(checkout / ".venv" / "bin" / "kitaru"), "executions", "get", exec_id, "-o", "json"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    assert '"status": "completed"' in shown.stdout


def _user_env(home: Path) -> dict[str, str]:
    # No uv on PATH: uvw must bring its own. Debian's python3 first.
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "KITARU_HOME": str(home / "kitaru-home"),
        **{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "UV_INDEX", "SSL_"))},
    }


def test_readme_commands_as_root_on_a_pep668_python(user_home: Path) -> None:
    _pep668_python()
    if os.geteuid() != 0:
        pytest.skip("this variant runs as root")
    checkout = _copy_checkout(user_home / "kitaru")
    env = _user_env(user_home)
    # uv's cache of this machine, if there is one, spares downloads; it changes nothing else.
    cache = Path.home() / ".cache" / "uv"
    if cache.is_dir():
        env["UV_CACHE_DIR"] = str(cache)
    _run_quickstart_then_answer(checkout, env, [])
    assert (checkout / ".uv" / "bin" / "uv").exists(), "uvw installed its own uv"


def test_readme_commands_as_an_unprivileged_user(user_home: Path) -> None:
    _pep668_python()
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    nobody = pwd.getpwnam("nobody")
    checkout = _copy_checkout(user_home / "kitaru")
    for path in [user_home, *user_home.rglob("*")]:
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    as_nobody = [
        "setpriv",
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        "--",
    ]
    env = _user_env(user_home)
    _run_quickstart_then_answer(checkout, env, as_nobody)
    assert (checkout / ".venv").stat().st_uid == nobody.pw_uid


def test_pip_install_from_a_checkout(tmp_path: Path) -> None:
    """`pip install .` and a cloud extra, into a plain virtual environment, from a copy."""
    checkout = _copy_checkout(tmp_path / "kitaru")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*pip, f"{checkout}[aws]"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = subprocess.run(
        [venv / "bin" / "kitaru", "stack", "list", "-o", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "KITARU_HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path)},
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert '"local"' in listed.stdout
    probe = "import kitaru_stack_aws, kitaru.local_stack; print('ok')"
    imported = subprocess.run([venv / "bin" / "python", "-c", probe], capture_output=True, text=True)
    assert imported.stdout.strip() == "ok", imported.stderr
