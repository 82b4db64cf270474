import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The `tiny` preset world, built once per test session."""
    from brainrecon.config import load_config
    from brainrecon.data.simworld import WorldConfig, simulate_world

    path = tmp_path_factory.mktemp("world") / "store"
    simulate_world(load_config(WorldConfig, "tiny", "worlds"), path, progress=False)
    return path


@pytest.fixture()
def tiny_config():
    from brainrecon.config import load_config
    from brainrecon.data.simworld import WorldConfig

    return load_config(WorldConfig, "tiny", "worlds")
