"""`@flow(stack=, retries=, cache=, image=)` and artifact tags (`save(..., tags=[...])`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

import kitaru
from kitaru import KitaruClient, checkpoint, flow
from kitaru._engine.runtime import Runtime
from kitaru.errors import KitaruUsageError


class TestFlowRetries:
    def test_a_failed_run_retries_from_its_journal(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        @checkpoint
        def first() -> int:
            ran["first"] += 1
            return 1

        @checkpoint
        def flaky() -> int:
            ran["flaky"] += 1
            if ran["flaky"] < 3:
                raise ConnectionError("try again")
            return 2

        @flow(retries=2)
        def retried() -> int:
            return first() + flaky()

        handle = retried.run()
        assert handle.wait(timeout=60) == 3
        assert ran == {"first": 1, "flaky": 3}  # the completed checkpoint was not run again
        kinds = [r.kind for r in runtime.state.read_journal(handle.exec_id)]
        assert kinds.count("flow_retry") == 2

    def test_retries_run_out(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        @flow(retries=1)
        def always_fails() -> None:
            ran["body"] += 1
            raise ValueError("no")

        handle = always_fails.run()
        assert handle.status == "failed"
        assert ran["body"] == 2

    def test_no_retries_by_default(self, runtime: Runtime) -> None:
        ran: Counter[str] = Counter()

        @flow
        def fails_once() -> None:
            ran["body"] += 1
            raise ValueError("no")

        assert fails_once.run().status == "failed"
        assert ran["body"] == 1

    def test_bad_retries_fail_at_definition(self) -> None:
        with pytest.raises(KitaruUsageError, match="retries"):
            flow(retries=-1)(lambda: None)


class TestFlowImage:
    def test_the_image_is_recorded_with_the_execution(self, runtime: Runtime) -> None:
        @flow(image="registry.example/agents:1.2")
        def imaged() -> int:
            return 1

        handle = imaged.run()
        assert KitaruClient(runtime).executions.get(handle.exec_id).metadata["image"] == (
            "registry.example/agents:1.2"
        )


class TestFlowStack:
    def test_the_flow_runs_on_its_stack_by_default(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = tmp_path / "kitaru.toml"
        other_home = tmp_path / "other"
        config.write_text(
            f'[stacks.elsewhere]\ntype = "local"\nstate = "sqlite:///{other_home}/state.db"\n'
            f'artifacts = "file://{other_home}/artifacts"\n'
        )
        monkeypatch.setenv("KITARU_CONFIG", str(config))

        @flow(stack="elsewhere")
        def placed() -> int:
            return 7

        handle = placed.run()
        assert handle.wait(timeout=60) == 7
        assert KitaruClient(stack="elsewhere").executions.get(handle.exec_id).status == "completed"
        with pytest.raises(kitaru.errors.KitaruNotFoundError):
            KitaruClient().executions.get(handle.exec_id)


class TestArtifactTags:
    def test_saved_tags_are_found_across_executions(self, runtime: Runtime) -> None:
        @checkpoint
        def inside() -> int:
            kitaru.save("draft", {"v": 1}, tags=["review", "draft"])
            return 1

        @flow
        def tagging(n: int) -> int:
            kitaru.save("report", f"report {n}", tags=["review"])
            kitaru.save("untagged", n)
            return inside()

        first, second = tagging.run(1), tagging.run(2)
        client = KitaruClient(runtime)

        found = client.artifacts.list(tag="review")
        assert {(a.exec_id, a.name) for a in found} == {
            (first.exec_id, "report"),
            (first.exec_id, "draft"),
            (second.exec_id, "report"),
            (second.exec_id, "draft"),
        }
        assert {a.name for a in client.artifacts.list(tag="draft")} == {"draft"}
        assert {a.exec_id for a in client.artifacts.list(second.exec_id, tag="review")} == {second.exec_id}
        report = next(a for a in client.artifacts.list(first.exec_id) if a.name == "report")
        assert report.tags == ["review"] and report.load() == "report 1"

    def test_tags_must_be_strings(self, runtime: Runtime) -> None:
        @flow
        def bad_tags() -> None:
            kitaru.save("x", 1, tags="review")  # type: ignore[arg-type]

        handle = bad_tags.run()
        assert handle.status == "failed"
        assert "tags" in (KitaruClient(runtime).executions.get(handle.exec_id).error or "")


def test_cli_lists_artifacts_by_tag(kitaru_home: Path) -> None:
    from kitaru.cli import main

    @flow
    def cli_tagged() -> None:
        kitaru.save("summary", "s", tags=["weekly"])

    handle = cli_tagged.run()
    result = CliRunner().invoke(main, ["artifacts", "list", "--tag", "weekly", "-o", "json"])
    assert result.exit_code == 0, result.output
    import json

    [item] = json.loads(result.output)
    assert item["exec_id"] == handle.exec_id and item["tags"] == ["weekly"]
