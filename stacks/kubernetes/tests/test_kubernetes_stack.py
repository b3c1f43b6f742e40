"""The kubernetes stack type: registered, takes its keys, and (until its orchestrator lands) runs
flows in-process against the stores its URIs name."""

from __future__ import annotations

from pathlib import Path

import pytest
from kitaru_stack_kubernetes import KubernetesStack

import kitaru
from kitaru.errors import KitaruConfigError
from kitaru.stack import load_stack
from kitaru.stack_config import stack_type


@kitaru.flow
def hello(name: str) -> str:
    return f"hello {name}"


def test_the_entry_point_names_the_class() -> None:
    assert stack_type("kubernetes") is KubernetesStack


def test_keys_are_taken_and_flows_run_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[stacks.k8s]
type = "kubernetes"
state = "sqlite:///{tmp_path / "k8s.db"}"
artifacts = "{(tmp_path / "artifacts").as_uri()}"
namespace = "agents"
image = "ghcr.io/acme/agents:1"
context = "staging"
"""
    )
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    stack = load_stack("k8s")
    assert isinstance(stack, KubernetesStack)
    assert (stack.namespace, stack.image, stack.context, stack.kubeconfig) == (
        "agents",
        "ghcr.io/acme/agents:1",
        "staging",
        None,
    )
    handle = hello.run("k8s", stack="k8s")
    assert handle.wait(timeout=60) == "hello k8s"
    assert (tmp_path / "k8s.db").exists()


def test_a_wrong_value_type_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[stacks.k8s]\ntype = "kubernetes"\nnamespace = 3\n')
    monkeypatch.setenv("KITARU_CONFIG", str(config))
    with pytest.raises(KitaruConfigError, match=r"config.toml, line 3.*'namespace'"):
        load_stack("k8s")
