# 0.18 logging: repeated dict keys merge, repeated scalars take the latest value.
# expect: checkpoint cost: {'usd': 0.001, 'tokens': 42}
# expect: execution metadata: {'a': {'x': 1, 'y': 2}}
import kitaru
from kitaru import KitaruClient, checkpoint, flow


@checkpoint
def tracked_step() -> str:
    kitaru.log(cost={"usd": 0.001})
    kitaru.log(cost={"tokens": 42})
    kitaru.log(status="draft")
    kitaru.log(status="final")
    return "done"


@flow
def writing_agent() -> str:
    kitaru.log(metadata={"a": {"x": 1}})
    result = tracked_step()
    kitaru.log(metadata={"a": {"y": 2}})
    return result


if __name__ == "__main__":
    handle = writing_agent.run()
    handle.wait()
    execution = KitaruClient().executions.get(handle.exec_id)
    step = execution.checkpoints[0]
    assert step.metadata["cost"] == {"usd": 0.001, "tokens": 42}, step.metadata
    assert step.metadata["status"] == "final"
    assert execution.metadata["metadata"] == {"a": {"x": 1, "y": 2}}, execution.metadata
    print("checkpoint cost:", step.metadata["cost"])
    print("execution metadata:", execution.metadata["metadata"])
