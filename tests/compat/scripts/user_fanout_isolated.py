# The 0.18 example flow_with_checkpoint_runtime: an isolated checkpoint fanned out with .submit(),
# collected with .result() (and .load(), as 0.18's futures had), the script polling
# handle.status.is_finished; .map() and .product() from the checkpoints concept page.
# expect: results: ['[processed] ALPHA', '[processed] BRAVO', '[processed] CHARLIE']
# expect: product: ['a1', 'a2', 'b1', 'b2']
import time

from kitaru import KitaruClient, checkpoint, flow


@checkpoint(runtime="isolated")
def transform_item(item: str) -> str:
    return f"[processed] {item.upper()}"


@checkpoint
def combine(letter: str, number: int) -> str:
    return f"{letter}{number}"


@flow
def parallel_transform(items: list[str]) -> dict:
    futures = [transform_item.submit(item) for item in items]
    results = [f.result() for f in futures]
    loaded = [f.load() for f in futures]
    assert loaded == results
    return {
        "results": results,
        "mapped": combine.map(["x", "y"], [1, 2]),
        "product": combine.product(["a", "b"], [1, 2]),
    }


if __name__ == "__main__":
    handle = parallel_transform.run(["alpha", "bravo", "charlie"])
    deadline = time.monotonic() + 120
    while not handle.status.is_finished:
        assert time.monotonic() < deadline, "the flow did not finish"
        time.sleep(1)
    assert handle.status.is_successful
    output = handle.wait()
    assert output["mapped"] == ["x1", "y2"]
    execution = KitaruClient().executions.get(handle.exec_id)
    assert sum(1 for c in execution.checkpoints if c.name == "transform_item") == 3
    print("Execution ID:", handle.exec_id)
    print("results:", output["results"])
    print("product:", output["product"])
