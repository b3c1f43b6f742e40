"""The rules every state store applies (kitaru/store/_rules.py), called as the stores call them: each
refusal is the error and the words the user sees whatever the backend, naming the execution, flow
or tag, why, and the command that helps. The conformance suites prove each store asks them."""

from __future__ import annotations

import os
import time

import pytest

from kitaru.errors import (
    KitaruConflictError,
    KitaruLeaseError,
    KitaruNotFoundError,
    KitaruStateError,
    KitaruUsageError,
)
from kitaru.store import TagMove, TagRequest, _rules

X = "01EXEC"


class TestExecutionStatuses:
    def test_a_final_status_is_never_left(self) -> None:
        for current in ("completed", "cancelled"):
            _rules.check_status_change(X, current, current)  # staying is no change
        with pytest.raises(KitaruStateError) as waiting:
            _rules.check_status_change(X, "completed", "waiting")
        assert str(waiting.value) == (
            f"execution {X} is completed, so it cannot wait for input: its result is final. See it "
            f"with `kitaru executions get {X}`; to run it anew, `kitaru executions replay {X} "
            "--from CHECKPOINT`."
        )
        with pytest.raises(KitaruStateError, match="is cancelled, so it cannot run again: a cancelled"):
            _rules.check_status_change(X, "cancelled", "running")
        with pytest.raises(KitaruStateError, match="is completed, so it cannot become failed: "):
            _rules.check_status_change(X, "completed", "failed")
        for current, new in [("running", "failed"), ("failed", "running"), ("waiting", "completed")]:
            _rules.check_status_change(X, current, new)

    def test_sql_stores_refuse_moves_out_of_the_final_statuses(self) -> None:
        assert _rules.refused_from("running") == ["cancelled", "completed"]
        assert _rules.refused_from("completed") == ["cancelled"]
        assert _rules.refused_from("cancelled") == ["completed"]

    def test_a_cancelled_execution_says_how_to_run_it_anew(self) -> None:
        assert str(_rules.final_error(X, "cancelled", "take an answer")) == (
            f"execution {X} is cancelled, so it cannot take an answer: a cancelled execution stays "
            f"cancelled. To run it anew, replay it: `kitaru executions replay {X} --from "
            "CHECKPOINT`."
        )

    def test_the_lease_is_taken_only_in_an_allowed_status(self) -> None:
        _rules.check_acquirable(X, "waiting", ["waiting", "running"])
        with pytest.raises(KitaruStateError) as refused:
            _rules.check_acquirable(X, "failed", iter(["waiting", "running"]))
        assert str(refused.value) == f"execution {X} is failed; this needs it to be running or waiting."
        with pytest.raises(KitaruStateError, match=f"^execution {X} is completed, so it cannot run again"):
            _rules.check_acquirable(X, "completed", ["completed"])

    def test_answers_and_cancels_need_an_unfinished_execution(self) -> None:
        for open_status in ("running", "waiting"):
            _rules.check_answerable(X, open_status)
            _rules.check_cancellable(X, open_status)
        with pytest.raises(
            KitaruStateError, match=f"^execution {X} is cancelled, so it cannot take an answer"
        ):
            _rules.check_answerable(X, "cancelled")
        for status in ("completed", "failed"):
            with pytest.raises(KitaruStateError) as refused:
                _rules.check_answerable(X, status)
            assert (
                str(refused.value) == f"execution {X} is {status}: its waits are closed and take no answers."
            )
        for status in ("completed", "failed", "cancelled"):
            with pytest.raises(KitaruStateError) as refused:
                _rules.check_cancellable(X, status)
            assert str(refused.value) == (
                f"execution {X} is already {status}; only running or waiting executions can be cancelled."
            )

    def test_a_wait_takes_one_answer_while_it_is_open(self) -> None:
        _rules.check_wait_open(X, "approve", iter(["wait_opened"]))
        with pytest.raises(KitaruNotFoundError) as missing:
            _rules.check_wait_open(X, "approve", [])
        assert str(missing.value) == f"execution {X} has no wait 'approve'"
        for kind, said in (("wait_answered", "answered"), ("wait_timed_out", "timed out")):
            with pytest.raises(KitaruStateError) as closed:
                _rules.check_wait_open(X, "approve", iter(["wait_opened", kind]))
            assert str(closed.value) == (
                f"wait 'approve' of execution {X} is already {said}; it takes no other answer. See "
                f"it with `kitaru executions get {X}`."
            )


class TestLeases:
    def test_a_lease_is_free_without_a_holder_or_once_expired(self) -> None:
        me = f"{_rules.HOST}:{os.getpid()}:token"
        now = time.time()
        assert _rules.lease_free(None, None, now)
        assert _rules.lease_free(me, now - 1, now)
        assert _rules.lease_free(me, None, now)  # a lease without an expiry does not hold
        assert not _rules.lease_free(me, now + 30, now)
        assert not _rules.lease_free(f"elsewhere:{os.getpid()}:t", now + 30, now)

    def test_another_live_runner_keeps_its_lease(self) -> None:
        now = time.time()
        holder = f"elsewhere:{os.getpid()}:t"
        expires = now + 30
        _rules.check_takeover(X, None, None, "me", now)
        _rules.check_takeover(X, "me", expires, "me", now)  # its own lease: renewed
        _rules.check_takeover(X, holder, now - 1, "me", now)  # expired: taken over
        with pytest.raises(KitaruLeaseError) as refused:
            _rules.check_takeover(X, holder, expires, "me", now)
        until = time.strftime("%H:%M:%S", time.localtime(expires))
        assert str(refused.value) == (
            f"execution {X} is being driven by {holder} (lease until {until}). It will finish "
            "there; if that runner is gone, retry after the lease expires."
        )

    def test_a_holder_on_this_host_is_alive_while_its_process_runs(self) -> None:
        assert _rules.lease_holder_alive(f"{_rules.HOST}:{os.getpid()}:t")
        assert _rules.lease_holder_alive(f"{_rules.HOST}:not-a-pid:t")
        assert _rules.lease_holder_alive(f"another-{_rules.HOST}:999999999:t")
        assert not _rules.lease_holder_alive(f"{_rules.HOST}:999999999:t")  # above any pid_max


class TestTags:
    def _plan(
        self, *requests: TagRequest, tags: dict[str, tuple[int, int | None]] | None = None
    ) -> list[TagMove]:
        history = {"default": [1, None, 2], "canary": [3]}
        return _rules.plan_tag_moves(
            "review",
            requests,
            [1, 2, 3],
            tags if tags is not None else {"default": (2, None), "canary": (3, 10)},
            lambda tag: history.get(tag, []),
            who="ana",
            now=1.5,
        )

    def test_each_refusal_names_what_to_do(self) -> None:
        cases: list[tuple[TagRequest, type[Exception], str]] = [
            (
                TagRequest("a b", "set", 1),
                KitaruUsageError,
                "'a b' is not a tag name: use letters, digits, '-', '_' or '.' (no '@', ':', '/' or spaces).",
            ),
            (
                TagRequest("gone", "remove"),
                KitaruNotFoundError,
                "flow 'review' has no tag 'gone'; nothing was changed. See its tags with "
                "`kitaru deployments list review`.",
            ),
            (
                TagRequest("default", "remove"),
                KitaruUsageError,
                "the 'default' tag of flow 'review' is what invocations use, so it is not removed; "
                "move it instead (`kitaru deployments rollback review` or `kitaru deployments tag "
                "review default N`).",
            ),
            (
                TagRequest("default", "promote", source="gone"),
                KitaruNotFoundError,
                "flow 'review' has no tag 'gone' to promote; nothing was changed. See its tags "
                "with `kitaru deployments list review`.",
            ),
            (
                TagRequest("gone", "rollback"),
                KitaruNotFoundError,
                "flow 'review' has no tag 'gone' to roll back; deploy it first with `flow.deploy()`.",
            ),
            (
                TagRequest("canary", "rollback"),
                KitaruStateError,
                "tag 'canary' of flow 'review' never pointed at a version other than 3, so there "
                "is nothing to roll back to; nothing was changed. Name one with `kitaru "
                "deployments rollback review --to N`.",
            ),
            (
                TagRequest("beta", "set"),
                KitaruUsageError,
                "moving tag 'beta' of flow 'review' needs a version.",
            ),
            (
                TagRequest("beta", "set", 9),
                KitaruNotFoundError,
                "flow 'review' has no version 9 (its versions are 1, 2, 3); nothing was changed. "
                "See them with `kitaru deployments list review`.",
            ),
            (
                TagRequest("beta", "set", 1, weight=101),
                KitaruUsageError,
                "weight 101 for tag 'beta' of flow 'review' is not a whole percentage: give 0 to "
                "100, e.g. `kitaru deployments tag review beta N --weight 10`.",
            ),
            (
                TagRequest("default", "set", 1, weight=5),
                KitaruUsageError,
                "the 'default' tag of flow 'review' takes the executions weighted tags leave, so "
                "it carries no weight. Weight a canary tag instead: `kitaru deployments tag "
                "review canary N --weight 10`.",
            ),
            (
                TagRequest("beta", "set", 1, weight=91),
                KitaruUsageError,
                "the weights of flow 'review''s tags would add up to 101%, over 100%; nothing was "
                "changed. Lower or remove another tag's weight first.",
            ),
        ]
        for request, error, message in cases:
            with pytest.raises(error) as refused:
                self._plan(request)
            assert str(refused.value) == message, request

    def test_a_flow_without_versions_says_so(self) -> None:
        with pytest.raises(KitaruNotFoundError) as refused:
            _rules.plan_tag_moves("new", [TagRequest("beta", "set", 1)], [], {}, list, who="ana", now=0)
        assert "flow 'new' has no version 1 (it has no versions yet); nothing was changed." in str(
            refused.value
        )

    def test_weights_are_whole_numbers_from_0_to_100(self) -> None:
        for weight in (None, 0, 100):
            _rules.check_weight("review", "beta", weight)
        for weight in (-1, 101, 2.5, True, "10"):
            with pytest.raises(KitaruUsageError, match="is not a whole percentage"):
                _rules.check_weight("review", "beta", weight)

    def test_the_moves_record_what_each_request_did(self) -> None:
        tags: dict[str, tuple[int, int | None]] = {"default": (2, None), "canary": (3, 10)}
        moves = self._plan(
            TagRequest(" beta ", "set", 1, weight=90),
            TagRequest("canary", "remove"),
            TagRequest("default", "promote", source="beta"),
            TagRequest("default", "rollback"),
            TagRequest("beta", "rollback", version=3),
            tags=tags,
        )
        assert [(m.tag, m.version, m.previous, m.weight, m.action) for m in moves] == [
            ("beta", 1, None, 90, "tag"),
            ("canary", None, 3, None, "untag"),
            ("default", 1, 2, None, "promote"),
            ("default", 2, 1, None, "rollback"),  # the last version other than the current one
            ("beta", 3, 1, 90, "rollback"),
        ]
        assert all((m.flow, m.who, m.ts) == ("review", "ana", 1.5) for m in moves)
        assert tags == {"default": (2, None), "beta": (3, 90)}
        named = _rules.plan_tag_moves(
            "review", [TagRequest("beta", "set", 1)], [1], {}, list, who="ana", now=0, action="deploy"
        )
        assert [m.action for m in named] == ["deploy"]

    def test_a_deploy_moves_default_for_the_first_version_and_its_own_tag(self) -> None:
        assert _rules.deploy_requests(None, None, 1, first=True) == [TagRequest("default", "set", 1)]
        assert _rules.deploy_requests("default", None, 1, first=True) == [TagRequest("default", "set", 1)]
        assert _rules.deploy_requests("canary", 10, 2, first=False) == [
            TagRequest("canary", "set", 2, weight=10)
        ]
        assert _rules.deploy_requests(None, None, 2, first=False) == []


def test_api_key_names_are_unique_and_named_in_errors() -> None:
    exists = _rules.key_exists("ci")
    assert isinstance(exists, KitaruConflictError)
    assert str(exists) == (
        "an API key named 'ci' exists already (names stay taken after a revoke, so logs keep "
        "meaning one key). Choose another name; `kitaru server keys list` shows the names in use."
    )
    missing = _rules.no_such_key("ci")
    assert isinstance(missing, KitaruNotFoundError)
    assert str(missing) == "no API key named 'ci'. `kitaru server keys list` shows them."
