"""The Helm chart of the team server (stacks/kubernetes/chart), linted and rendered by real Helm.

``helm-python-sdk`` (dev group) embeds Helm v4 as a library: ``lint``, ``Chart.render`` (which,
like ``helm install``, first checks the values against the chart's ``values.schema.json``). Every
rendered object is validated against the Kubernetes v1.32 schema of its kind, strictly (an unknown
field is an error; ``k8s_schema/`` says where the schemas came from), and its names against the
apiserver's name rules. Then what a user relies on: the database URL reaches the server only
through the Secret, the Service selects the server pods, the probes hit ``/healthz``, the
container's arguments are ones ``kitaru server start`` accepts; and, with real processes and a real
PostgreSQL, two replicas started as the Deployment starts them share the database with one
holding the background role. The API-key bootstrap script the chart's Job runs is run for real,
against the Kubernetes apiserver double.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import jsonschema
import pytest
import yaml

from kitaru.server._auth import verify_key
from kitaru.store import sync_view
from kitaru.store.sqlite import SQLiteStateStore
from tests._services.kube import KubeApi
from tests.server.conftest import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "stacks" / "kubernetes" / "chart"
TEMPLATES = sorted((CHART / "templates").glob("*"))
K8S = json.loads((Path(__file__).parent / "k8s_schema" / "v1.32.json").read_text())
URL = "postgresql://kitaru:s3cret@db.example:5432/kitaru"

Obj = dict[str, Any]


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def leaf_paths(tree: Any, prefix: str = "") -> set[str]:
    if isinstance(tree, dict) and tree:
        return {p for k, v in tree.items() for p in leaf_paths(v, f"{prefix}.{k}" if prefix else k)}
    return {prefix}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


# The apiserver's name rules (k8s.io/apimachinery/pkg/util/validation).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def check_names(obj: Obj) -> None:
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "Service":
        assert len(name) <= 63 and _DNS_1035.fullmatch(name), f"Service name {name!r}"
    elif kind in ("Job", "Deployment"):
        # A Job's name becomes its pods' job-name label; a Deployment's, its pods' name prefix.
        assert len(name) <= 63 and _DNS_LABEL.fullmatch(name), f"{kind} name {name!r}"
    else:
        assert len(name) <= 253 and all(_DNS_LABEL.fullmatch(p) for p in name.split(".")), name
    pod_labels = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    for key, value in {**obj["metadata"].get("labels", {}), **pod_labels}.items():
        assert isinstance(value, str) and len(value) <= 63 and _LABEL_VALUE.fullmatch(value), (
            f"{kind} {name}: label {key}={value!r}"
        )


def check_schema(obj: Obj) -> None:
    """``obj`` against its kind's Kubernetes schema; every fault is listed, not just the first."""
    definition = K8S["kinds"].get(f"{obj['apiVersion']}/{obj['kind']}")
    assert definition, f"{obj['apiVersion']} {obj['kind']} is not a kind the chart is known to render"
    validator = jsonschema.Draft202012Validator({"$defs": K8S["$defs"], "$ref": f"#/$defs/{definition}"})
    faults = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=str)
    ]
    assert not faults, f"{obj['kind']} {obj['metadata']['name']}:\n" + "\n".join(faults)


def render(chart: helm.Chart, overrides: dict[str, Any], release: str = "kitaru") -> list[Obj]:
    """The objects ``helm install`` would create, each checked against Kubernetes' rules."""
    manifests = chart.render(overrides, name=release, namespace="team", is_install=True)
    objects = [
        obj
        for path, text in manifests.items()
        if not path.endswith("NOTES.txt")
        for obj in yaml.safe_load_all(text)
        if obj
    ]
    for obj in objects:
        check_schema(obj)
        check_names(obj)
    return objects


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def server_container(objects: list[Obj]) -> Obj:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["server"]
    container: Obj = containers[0]
    return container


def kubelet_env(container: Obj, secrets: dict[str, dict[str, str]], mounts: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: secretKeyRef values read from
    ``secrets``; ``mounts`` maps the chart's paths to where this machine has them."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            env[item["name"]] = mounts.get(item["value"], item["value"])
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    """$(VAR) in a container's args, expanded as the kubelet does."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


# -- lint and render ---------------------------------------------------------------------------


def test_helm_lints_the_chart_clean() -> None:
    report = helm.lint(CHART, {"database": {"url": URL}}, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # nothing beyond "icon"
    # (Lint tolerates the chart's `fail` for a missing database; rendering does not: see below.)


def test_defaults_render_valid_kubernetes_objects(chart: helm.Chart) -> None:
    objects = render(chart, {"database": {"url": URL}})
    assert sorted(o["kind"] for o in objects) == [
        "ConfigMap", "Deployment", "Job", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount",
    ]  # fmt: skip
    deployment = one(objects, "Deployment")
    # Two replicas by default: the background role (timers, recovery) is held by one at a time
    # through a PostgreSQL advisory lock (the e2e test below runs two).
    assert deployment["spec"]["replicas"] == 2
    assert server_container(objects)["image"] == f"kitaru:{chart.metadata['appVersion']}"


def test_every_values_key_is_in_the_schema_used_by_a_template_and_valid(chart: helm.Chart) -> None:
    tree = values()
    chart.validate_schema(tree)  # the defaults satisfy values.schema.json (it closes every object)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(tree) <= set(schema["properties"])
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
    leaves = leaf_paths(tree)
    unused = {leaf for leaf in leaves if not any(leaf == r or leaf.startswith(r + ".") for r in referenced)}
    assert not unused, f"values.yaml keys no template uses: {sorted(unused)}"


def test_the_options_a_user_sets_render_valid_objects(chart: helm.Chart) -> None:
    objects = render(
        chart,
        {
            "image": {"repository": "registry.example/team/kitaru", "tag": "1.4.2"},
            "imagePullSecrets": [{"name": "registry-login"}],
            "replicaCount": 3,
            "database": {"existingSecret": "team-db", "secretKey": "url"},
            "server": {
                "port": 9000,
                "workers": 2,
                "accessLog": True,
                "stack": "prod",
                "stackConfig": '[stacks.prod]\norchestrator = "kubernetes"\n',
                "extraEnv": [
                    {
                        "name": "OPENAI_API_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "llm", "key": "openai"}},
                    },
                    {"name": "KITARU_LEASE_TTL", "value": "30"},
                ],
            },
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
                "host": "kitaru.team.example",
                "tls": [{"secretName": "kitaru-tls", "hosts": ["kitaru.team.example"]}],
            },
            "resources": {
                "requests": {"cpu": "500m", "memory": "512Mi"},
                "limits": {"cpu": 2, "memory": "2Gi"},
            },
            "service": {"annotations": {"team.example/owner": "agents"}},
            "podAnnotations": {"team.example/scrape": "true"},
            "nodeSelector": {"pool": "agents"},
            "tolerations": [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
        },
    )
    kinds = {o["kind"] for o in objects}
    assert "Secret" not in kinds  # the user's Secret holds the URL; the chart makes none
    assert "Ingress" in kinds

    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(objects)
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "registry.example/team/kitaru:1.4.2"
    assert pod["imagePullSecrets"] == [{"name": "registry-login"}]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": 2, "memory": "2Gi"},
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["KITARU_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "team-db", "key": "url"}}
    assert env["OPENAI_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "llm", "key": "openai"}}
    assert env["KITARU_LEASE_TTL"]["value"] == "30"
    assert env["KITARU_CONFIG"]["value"] == "/etc/kitaru/stacks.toml"
    config_mount = {"name": "config", "mountPath": "/etc/kitaru/stacks.toml", "subPath": "stacks.toml"}
    assert {**config_mount, "readOnly": True} in container["volumeMounts"]
    assert 'orchestrator = "kubernetes"' in one(objects, "ConfigMap")["data"]["stacks.toml"]
    assert "--stack=prod" in container["args"] and "--workers=2" in container["args"]
    assert "--access-log" in container["args"]
    assert container["ports"] == [{"name": "http", "containerPort": 9000}]
    assert pod["nodeSelector"] == {"pool": "agents"}
    assert deployment["spec"]["template"]["metadata"]["annotations"]["team.example/scrape"] == "true"

    # The bootstrap Job reads the same Secret.
    job_env = {e["name"]: e for e in one(objects, "Job")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert job_env["KITARU_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "team-db", "key": "url"}}

    ingress = one(objects, "Ingress")
    service = one(objects, "Service")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "kitaru-tls", "hosts": ["kitaru.team.example"]}]
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "kitaru.team.example"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["metadata"]["annotations"] == {"team.example/owner": "agents"}


def test_the_database_url_reaches_the_server_only_through_the_secret(chart: helm.Chart) -> None:
    objects = render(chart, {"database": {"url": URL}})
    secret = one(objects, "Secret")
    container = server_container(objects)
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "KITARU_DATABASE_URL"]
    assert ref["name"] == secret["metadata"]["name"]
    assert secret["stringData"][ref["key"]] == URL
    assert "--state=$(KITARU_DATABASE_URL)" in container["args"]
    for obj in objects:
        if obj is not secret:
            assert "s3cret" not in json.dumps(obj), f"the password is in the {obj['kind']}"


def test_the_service_selects_the_server_pods_and_the_probes_hit_healthz(chart: helm.Chart) -> None:
    objects = render(chart, {"database": {"url": URL}})
    deployment = one(objects, "Deployment")
    service = one(objects, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # ... and not the bootstrap Job's pods.
    job_labels = one(objects, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items()

    container = server_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert container[probe]["httpGet"]["port"] in ports


def test_the_server_arguments_are_ones_kitaru_server_start_accepts(chart: helm.Chart) -> None:
    from kitaru.cli.server import start

    objects = render(
        chart, {"database": {"url": URL}, "server": {"stack": "prod", "workers": 3, "accessLog": True}}
    )
    container = server_container(objects)
    env = kubelet_env(container, {one(objects, "Secret")["metadata"]["name"]: {"database-url": URL}}, {})
    assert container["command"] == ["kitaru"] and container["args"][:2] == ["server", "start"]
    context = start.make_context("start", [expand(a, env) for a in container["args"][2:]])
    assert context.params == {
        "host": "0.0.0.0",
        "port": container["ports"][0]["containerPort"],
        "stack_name": "prod",
        "state_uri": URL,
        "workers": 3,
        "access_log": True,
    }


def test_a_long_release_name_still_gives_valid_names(chart: helm.Chart) -> None:
    release = "r" * 53  # the longest release name Helm allows
    helm.validate_release_name(release)
    objects = render(chart, {"database": {"url": URL}, "ingress": {"enabled": True}}, release=release)
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects)
    job = one(objects, "Job")
    assert job["metadata"]["name"].endswith("-bootstrap-key")


@pytest.mark.parametrize(
    ("wrong", "named"),
    [
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"image": {"tag": 1.5}}, "/image/tag"),  # `--set image.tag=1.5` without --set-string
        ({"database": {"url": "sqlite:///kitaru.db"}}, "/database/url"),
        ({"server": {"workers": 0}}, "/server/workers"),
        ({"server": {"extraEnv": [{"value": "x"}]}}, "/server/extraEnv/0"),
        ({"ingress": {"enabled": True, "host": ""}}, "/ingress/host"),
        ({"ingress": {"tls": [{"hosts": ["a.example"]}]}}, "/ingress/tls/0"),
        ({"apiKeyBootstrap": {"scopes": ["root"]}}, "/apiKeyBootstrap/scopes/0"),
        ({"service": {"type": "Clusterip"}}, "/service/type"),
        ({"resources": {"request": {"cpu": "1"}}}, "'request' not allowed"),
    ],
)
def test_wrong_values_fail_at_install_naming_the_key(chart: helm.Chart, wrong: Obj, named: str) -> None:
    overrides = {**wrong, "database": {"url": URL, **wrong.get("database", {})}}
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.render(overrides, name="kitaru", is_install=True)
    assert named in str(refused.value)
    assert "schema" in str(refused.value)


def test_no_database_fails_with_what_to_set(chart: helm.Chart) -> None:
    with pytest.raises(
        helm.HelmRenderError, match=r"set database\.url \(postgresql://.*or database\.existingSecret"
    ):
        chart.render({}, name="kitaru", is_install=True)


# -- real processes --------------------------------------------------------------------------


@pytest.mark.e2e
def test_two_replicas_started_as_the_deployment_starts_them_share_the_database(
    chart: helm.Chart, postgres_dsn: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """Each replica is the Deployment's container run as the kubelet would run it (its command,
    its args with $(VAR) expanded, its env with the Secret's value); both answer the readiness
    probe's path and exactly one holds the background role."""
    replicas: list[tuple[subprocess.Popen[bytes], str]] = []
    logs = ExitStack()
    try:
        for n in range(2):
            port = free_port()  # two pods on one machine: their own ports
            objects = render(chart, {"database": {"url": postgres_dsn}, "server": {"port": port}})
            container = server_container(objects)
            secret = one(objects, "Secret")
            home = tmp_path / f"pod{n}"
            home.mkdir()
            env = kubelet_env(
                container,
                {secret["metadata"]["name"]: secret["stringData"]},
                {"/var/lib/kitaru": str(home)},
            )
            command = [str(Path(sys.executable).with_name(container["command"][0]))]
            log = logs.enter_context((tmp_path / f"pod{n}.log").open("wb"))
            proc = subprocess.Popen(
                [*command, *(expand(a, env) for a in container["args"])],
                env={**subprocess_env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            probe = container["readinessProbe"]["httpGet"]
            replicas.append((proc, f"http://127.0.0.1:{port}{probe['path']}"))

        def health(url: str, proc: subprocess.Popen[bytes]) -> Any:
            assert proc.poll() is None, f"a replica exited ({proc.returncode})"
            try:
                answer = httpx.get(url, timeout=5)
            except httpx.HTTPError:
                return None
            return answer.json() if answer.status_code == 200 else None

        for proc, url in replicas:
            wait_until(lambda p=proc, u=url: health(u, p), timeout=120, what="the readiness probe")
        wait_until(
            lambda: sum(bool((health(u, p) or {}).get("background_role")) for p, u in replicas) == 1,
            timeout=60,
            what="one replica holding the background role",
        )
        # Held, not passed around: a while later still exactly one.
        roles = [bool(health(u, p)["background_role"]) for p, u in replicas]
        assert sorted(roles) == [False, True]
    finally:
        for proc, _ in replicas:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        logs.close()
    said = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("pod*.log")}
    assert all(postgres_dsn not in text for text in said.values()), said


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
