"""The RBAC manifests shipped in stacks/kubernetes/deploy: well formed, bound together, and
granting exactly the verbs the runner uses (no Secrets, no writes beyond Jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

RBAC = Path(__file__).resolve().parent.parent / "deploy" / "rbac.yaml"


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc}


def test_the_service_account_role_and_binding_go_together() -> None:
    docs = documents()
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding"}
    account, role, binding = docs["ServiceAccount"], docs["Role"], docs["RoleBinding"]
    namespaces = {d["metadata"]["namespace"] for d in docs.values()}
    assert len(namespaces) == 1
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespaces.pop()}
    ]


def test_the_role_grants_exactly_what_the_runner_uses() -> None:
    grants = {
        (group, resource): sorted(rule["verbs"])
        for rule in documents()["Role"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert grants == {
        ("batch", "jobs"): ["create", "delete", "get", "list", "watch"],
        ("batch", "jobs/status"): ["get"],
        ("", "pods"): ["get", "list", "watch"],
        ("", "pods/log"): ["get"],
    }
