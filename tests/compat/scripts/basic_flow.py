# A plain 0.18 flow: checkpoints return values inside the flow, .run() returns a handle.
# expect: result: HELLO, KITARU
from kitaru import checkpoint, flow


@checkpoint
def greet(name: str) -> str:
    return f"hello, {name}"


@checkpoint
def shout(text: str) -> str:
    return text.upper()


@flow
def hello(name: str) -> str:
    return shout(greet(name))


if __name__ == "__main__":
    handle = hello.run("kitaru")
    result = handle.wait()
    print("result:", result)
