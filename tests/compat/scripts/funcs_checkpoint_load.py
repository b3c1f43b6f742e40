# 0.18 returned a handle from a checkpoint call inside a flow; code calling .load() on it now
# gets an error that says exactly what to change (the one deliberate difference).
# exit: 1
# expect: KitaruNotAHandleError: checkpoint 'write_draft' returned its value (a str)
# expect: Remove `.load()`: write `write_draft(...)` where the code says `write_draft(...).load()`
from kitaru import checkpoint, flow


@checkpoint
def write_draft(topic: str) -> str:
    return f"Draft about {topic}."


@flow
def writing_agent(topic: str) -> str:
    draft = write_draft(topic).load()
    return draft.upper()


if __name__ == "__main__":
    writing_agent.run("kitaru").wait()
