"""Create the kitaru server's first API key once and keep it in a Kubernetes Secret.

Run by the chart's post-install/upgrade Job (standard library only, plus the `kitaru` command of the
image). When a key named $KITARU_KEY_NAME exists already it does nothing; otherwise it creates it
with `kitaru server keys create` and writes it to the Secret $KITARU_KEY_SECRET through the
Kubernetes API with the pod's service account. The key goes to the Secret only, never to a log.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

SA = os.environ.get("KITARU_SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
API = os.environ.get("KITARU_KUBE_API") or (
    f"https://{os.environ.get('KUBERNETES_SERVICE_HOST', 'kubernetes.default.svc')}:"
    f"{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}"
)


def read(name: str) -> str:
    with open(os.path.join(SA, name)) as fh:
        return fh.read().strip()


def kube(method: str, path: str, body: dict | None = None) -> int:
    """One request to the Kubernetes API; its HTTP status."""
    request = urllib.request.Request(
        API + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {read('token')}", "Content-Type": "application/json"},
    )
    context = (
        ssl.create_default_context(cafile=os.path.join(SA, "ca.crt")) if API.startswith("https") else None
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def kitaru_keys(*args: str) -> str:
    done = subprocess.run(
        ["kitaru", "server", "keys", *args, "--state", os.environ["KITARU_DATABASE_URL"], "-o", "json"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"`kitaru server keys {args[0]}` failed: {done.stderr.strip()}")
    return done.stdout


def main() -> None:
    name = os.environ["KITARU_KEY_NAME"]
    scopes = [s for s in os.environ.get("KITARU_KEY_SCOPES", "admin").split(",") if s]
    secret = os.environ["KITARU_KEY_SECRET"]
    namespace = os.environ.get("KITARU_NAMESPACE") or read("namespace")
    secrets = f"/api/v1/namespaces/{namespace}/secrets"

    if any(k.get("name") == name for k in json.loads(kitaru_keys("list"))):
        if kube("GET", f"{secrets}/{secret}") == 200:
            print(f"API key {name!r} exists; it is in Secret {secret}. Nothing to do.")
            return
        sys.exit(
            f"API key {name!r} exists but Secret {secret} does not (it was shown once and is gone). "
            f"Revoke it with `kitaru server keys revoke {name}` and set apiKeyBootstrap.keyName to a "
            "new name, or create a key by hand with `kitaru server keys create`."
        )
    args = [a for s in scopes for a in ("--scope", s)]
    key = json.loads(kitaru_keys("create", name, *args))["key"]
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret, "labels": {"app.kubernetes.io/component": "api-key"}},
        "type": "Opaque",
        "stringData": {"api-key": key},
    }
    status = kube("POST", secrets, body)
    if status == 409:  # a Secret left from an earlier key of another name: replace it
        kube("DELETE", f"{secrets}/{secret}")
        status = kube("POST", secrets, body)
    if status not in (200, 201):
        sys.exit(
            f"API key {name!r} was created but Secret {secret} could not be written (HTTP {status}). "
            f"Revoke it with `kitaru server keys revoke {name}` and run the bootstrap again with a new name."
        )
    print(f"API key {name!r} ({', '.join(scopes)}) created; it is in Secret {secret}.")


if __name__ == "__main__":
    main()
