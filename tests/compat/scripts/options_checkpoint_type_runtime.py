# 0.18's checkpoint options: type= labels the call, runtime="isolated" runs it in its own process.
# expect: isolated ran in its own process
# expect: types: {'call_model': 'llm_call', 'heavy': None}
import os

import kitaru
from kitaru import checkpoint, flow


@checkpoint(retries=2, type="llm_call")
def call_model(prompt: str) -> str:
    return f"answer to {prompt}"


@checkpoint(runtime="isolated")
def heavy(text: str) -> dict:
    return {"pid": os.getpid(), "length": len(text)}


@flow
def agent(prompt: str) -> dict:
    answer = call_model(prompt)
    measured = heavy(answer)
    return {"answer": answer, "child_pid": measured["pid"], "pid": os.getpid(), "length": measured["length"]}


if __name__ == "__main__":
    handle = agent.run("kitaru")
    result = handle.wait()
    assert result["answer"] == "answer to kitaru" and result["length"] == len(result["answer"])
    assert result["child_pid"] != result["pid"]
    print("isolated ran in its own process")
    execution = kitaru.KitaruClient().executions.get(handle.exec_id)
    print("types:", {c.call_id: c.type for c in execution.checkpoints})
