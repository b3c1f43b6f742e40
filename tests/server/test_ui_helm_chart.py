"""The Helm chart of the team server (stacks/kubernetes/chart).

No ``helm`` is installable on these machines (no Debian package; nothing on PyPI ships the real
binary), and a home-made Go-template renderer would test itself, not helm. So:

- with ``helm`` on PATH, the chart is linted and rendered by it, and the manifests are checked;
- always, the chart's static structure is checked: Chart.yaml, values.yaml, every ``.Values``
  reference of the templates exists in values.yaml and every value is used, template blocks are
  balanced, every ``include`` names a defined template;
- always, the API-key bootstrap script the chart's Job runs is run for real, against the
  Kubernetes apiserver double and a real state store.

Not checked without helm: that the templates render to valid YAML for every combination of values.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kitaru.server._auth import verify_key
from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore
from tests._services.kube import KubeApi

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "stacks" / "kubernetes" / "chart"
TEMPLATES = sorted((CHART / "templates").glob("*"))


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def leaf_paths(tree: Any, prefix: str = "") -> set[str]:
    if isinstance(tree, dict) and tree:
        return {p for k, v in tree.items() for p in leaf_paths(v, f"{prefix}.{k}" if prefix else k)}
    return {prefix}


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "kitaru-server"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"]
    names = {t.name for t in TEMPLATES}
    assert {"deployment.yaml", "service.yaml", "secret.yaml", "ingress.yaml", "_helpers.tpl"} <= names


def test_every_values_reference_exists_and_every_value_is_used() -> None:
    tree = values()
    leaves = leaf_paths(tree)
    referenced: set[str] = set()
    for template in TEMPLATES:
        for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()):
            node: Any = tree
            for part in ref.split("."):
                assert isinstance(node, dict) and part in node, (
                    f"{template.name}: .Values.{ref} is not in values.yaml"
                )
                node = node[part]
            referenced.add(ref)
    unused = {leaf for leaf in leaves if not any(leaf == r or leaf.startswith(r + ".") for r in referenced)}
    assert not unused, f"values.yaml keys no template uses: {sorted(unused)}"


def test_template_blocks_are_balanced_and_includes_defined() -> None:
    defined: set[str] = set()
    for template in TEMPLATES:
        text = template.read_text()
        actions = re.findall(r"{{-?\s*(.*?)\s*-?}}", text, flags=re.S)
        opened = sum(1 for a in actions if re.match(r"(if|range|with|define)\b", a))
        closed = sum(1 for a in actions if re.fullmatch(r"end", a))
        assert opened == closed, f"{template.name}: {opened} blocks opened, {closed} closed"
        defined |= set(re.findall(r'define\s+"([^"]+)"', text))
    for template in TEMPLATES:
        for name in re.findall(r'include\s+"([^"]+)"', template.read_text()):
            assert name in defined, f"{template.name} includes undefined template {name!r}"
    # .Files.Get names files that exist in the chart.
    for template in TEMPLATES:
        for name in re.findall(r'\.Files\.Get\s+"([^"]+)"', template.read_text()):
            assert (CHART / name).is_file(), f"{template.name}: {name} is not in the chart"


@pytest.mark.skipif(
    shutil.which("helm") is None, reason="helm is not installed (no package provides it here)"
)
def test_helm_lints_and_renders_the_chart(tmp_path: Path) -> None:
    helm = shutil.which("helm")
    assert helm is not None
    url = "postgresql://kitaru:secret@db:5432/kitaru"
    lint = subprocess.run(
        [helm, "lint", str(CHART), "--set", f"database.url={url}"], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(
        [helm, "template", "r", str(CHART), "--set", f"database.url={url}", "--set", "ingress.enabled=true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Secret", "Ingress", "Job", "ConfigMap"} <= kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert url not in json.dumps(deployment)  # the URL is only in the Secret
    assert "--state=$(KITARU_DATABASE_URL)" in container["args"]
    missing = subprocess.run([helm, "template", "r", str(CHART)], capture_output=True, text=True)
    assert missing.returncode != 0 and "database.url" in missing.stderr


@pytest.mark.e2e
def test_bootstrap_job_creates_the_first_key_once_into_a_secret(
    kube_api: KubeApi, kitaru_home: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """The script the chart's Job runs, run as that Job would (service account files, the
    database URL in the environment), against the apiserver double and a SQLite state store."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("dummy")
    state = f"sqlite:///{kitaru_home / 'server.db'}"
    env = {
        **subprocess_env,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "KITARU_DATABASE_URL": state,
        "KITARU_SA_DIR": str(sa),
        "KITARU_KUBE_API": kube_api.url,
        "KITARU_NAMESPACE": "default",
        "KITARU_KEY_NAME": "admin",
        "KITARU_KEY_SCOPES": "admin",
        "KITARU_KEY_SECRET": "kitaru-api-key",
    }
    script = [sys.executable, str(CHART / "files" / "bootstrap_key.py")]

    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    secret = kube_api.request("GET", "/api/v1/namespaces/default/secrets/kitaru-api-key")
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    assert key not in first.stdout + first.stderr  # the key goes to the Secret only

    store = sync_view(SQLiteStateStore(kitaru_home / "server.db"))
    try:
        records = store.list_api_keys()  # type: ignore[attr-defined]
    finally:
        store.close()
    assert [(r.name, r.scopes) for r in records] == [("admin", ["admin"])]
    assert verify_key(key, records[0])

    # Run again (every upgrade does): nothing changes.
    again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "Nothing to do" in again.stdout
    same = kube_api.request("GET", "/api/v1/namespaces/default/secrets/kitaru-api-key")
    assert same["data"] == secret["data"]

    # The Secret lost but the key still there: the Job says what to do instead of minting another.
    kube_api.request("DELETE", "/api/v1/namespaces/default/secrets/kitaru-api-key")
    lost = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert lost.returncode != 0
    assert "kitaru server keys revoke admin" in lost.stderr
