# 0.18's configuration: configure() defaults, @flow options, per-run overrides, ImageSettings.
# expect: retried from the journal: 3 attempts, 1 fetch
# expect: image: python:3.12-slim
import kitaru
from kitaru import checkpoint, flow

config = kitaru.configure(
    stack="local",
    cache=False,
    retries=1,
    image=kitaru.ImageSettings(
        base_image="python:3.12-slim",
        environment={"LOG_LEVEL": "INFO"},
        secret_environment_from=["openai-creds"],
    ),
)

CALLS = {"fetch": 0, "flaky": 0}


@checkpoint
def fetch(topic: str) -> str:
    CALLS["fetch"] += 1
    return f"data about {topic}"


@checkpoint
def flaky(data: str) -> str:
    CALLS["flaky"] += 1
    if CALLS["flaky"] < 3:
        raise RuntimeError("transient")
    return data.upper()


@flow(cache=False, retries=1, image={"requirements": ["httpx"]})
def my_flow(topic: str) -> str:
    return flaky(fetch(topic))


if __name__ == "__main__":
    # the run's retries (2) win over the decorator's (1) and configure()'s (1)
    handle = my_flow.run("kitaru", retries=2, stack="local")
    assert handle.wait() == "DATA ABOUT KITARU"
    print(f"retried from the journal: {CALLS['flaky']} attempts, {CALLS['fetch']} fetch")
    assert CALLS == {"fetch": 1, "flaky": 3}
    assert config.retries == 1 and config.cache is False
    print("image:", config.image.base_image)
