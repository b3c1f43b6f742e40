# The 0.18 checkpoints concept page: @kitaru.checkpoint(retries=3, type="llm_call"), the attempt
# history through KitaruClient().executions.get(exec_id).checkpoints[*].attempts, .submit() with
# .result() and .map() inside a flow, and the quickstart's handle (exec_id, status, wait()).
# expect: call_model attempts: failed, failed, completed
# expect: parallel: ['A', 'B', 'C'] mapped: ['X', 'Y']
import kitaru

CALLS = {"call_model": 0}


@kitaru.checkpoint(retries=3, type="llm_call")
def call_model(prompt: str) -> str:
    CALLS["call_model"] += 1
    if CALLS["call_model"] < 3:
        raise ConnectionError("provider hiccup")
    return f"answer to {prompt}"


@kitaru.checkpoint
def fetch_data(url: str) -> str:
    return url.upper()


@kitaru.flow
def my_agent(prompt: str) -> dict:
    futures = [fetch_data.submit(url) for url in ["a", "b", "c"]]
    return {
        "answer": call_model(prompt),
        "parallel": [f.result() for f in futures],
        "mapped": fetch_data.map(["x", "y"]),
    }


if __name__ == "__main__":
    handle = my_agent.run("hello")
    print(handle.exec_id, handle.status)
    result = handle.wait()
    assert result["answer"] == "answer to hello"
    execution = kitaru.KitaruClient().executions.get(handle.exec_id)
    call = next(c for c in execution.checkpoints if c.name == "call_model")
    print("call_model attempts:", ", ".join(a.status for a in call.attempts))
    assert call.attempts[0].failure.exception_type == "ConnectionError"
    assert call.type == "llm_call"
    print("parallel:", result["parallel"], "mapped:", result["mapped"])
