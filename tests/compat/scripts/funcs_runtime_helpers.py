# 0.18 examples printed the CLI commands for the running execution with kitaru.runtime's helper.
# expect: To approve remotely, run in another terminal:
# expect: checkpoint seen as draft_release_note
from kitaru import checkpoint, flow
from kitaru.runtime import (
    _get_current_checkpoint_name,
    _get_current_execution_id,
    _is_inside_checkpoint,
    _is_inside_flow,
)

SEEN = {}


@checkpoint
def draft_release_note(topic: str) -> str:
    assert _is_inside_checkpoint()
    SEEN["checkpoint"] = _get_current_checkpoint_name()
    SEEN["exec_id"] = _get_current_execution_id()
    return f"Draft about {topic}."


@flow
def wait_for_approval_flow(topic: str) -> str:
    draft = draft_release_note(topic)
    exec_id = _get_current_execution_id()
    assert _is_inside_flow() and exec_id
    SEEN["flow_exec_id"] = exec_id
    print("\nTo approve remotely, run in another terminal:")
    print(f"  kitaru executions input {exec_id} --value true")
    return draft


if __name__ == "__main__":
    assert _get_current_execution_id() is None and not _is_inside_flow()
    handle = wait_for_approval_flow.run("v1.0")
    assert handle.wait() == "Draft about v1.0."
    assert SEEN["exec_id"] == SEEN["flow_exec_id"] == handle.exec_id, SEEN
    print("checkpoint seen as", SEEN["checkpoint"])
