import os
import signal

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network

# The slowest test takes about 2 minutes on 2 cores. A test that waits longer than this on something that never
# comes (a child process, a pipe) fails with its stack, instead of holding CI until CI's own limit ends it
# silently. pyproject's faulthandler_timeout prints every thread's stack earlier, for a wait inside C code.
TEST_LIMIT_S = 900


def pytest_terminal_summary(terminalreporter):
    """The CPU, at the end where CI's log is read: its float kernels set the last digits of a world or a run, so a
    test that compares bytes across processes is read against the machine it ran on."""
    from brainrecon.bench.leaderboard import cpu_model

    terminalreporter.write_line(f"machine: {cpu_model()}, {os.cpu_count()} CPUs")


@pytest.fixture(autouse=True)
def bounded_test(request):
    def expire(signum, frame):
        raise TimeoutError(f"{request.node.nodeid} ran past {TEST_LIMIT_S} s (tests/conftest.py TEST_LIMIT_S)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session", autouse=True)
def private_target_cache(tmp_path_factory):
    """Training targets are cached per test session, never in the user's ~/.cache."""
    previous = os.environ.get("BRAINRECON_CACHE")
    os.environ["BRAINRECON_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("BRAINRECON_CACHE", None)
    else:
        os.environ["BRAINRECON_CACHE"] = previous


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


TRAIN_WORLD = {"n_subjects": 3, "n_train_images": 400, "n_test_images": 100,
               "voxels": {"min": 300, "max": 400},
               "noise": {"code_noise": 1.0, "median_voxel_snr": 1.5, "log_spread": 0.5, "subject_spread": 0.15,
                         "drift_fraction": 0.15}}


@pytest.fixture(scope="session")
def train_world(tmp_path_factory):
    """A small 3-subject world with a clear signal, so short training runs rise well above chance."""
    from brainrecon.config import load_config
    from brainrecon.data.simworld import WorldConfig, simulate_world

    path = tmp_path_factory.mktemp("train-world") / "store"
    simulate_world(load_config(WorldConfig, "tiny", "worlds", **TRAIN_WORLD), path, progress=False)
    return path


@pytest.fixture(scope="session")
def ridge_run(train_world, tmp_path_factory):
    """A ridge run on subj01 of the train world, decoding small-CLIP image tokens (seconds to fit)."""
    from brainrecon.config import validate_config
    from brainrecon.evaluate.evaluation import final_evaluation
    from brainrecon.train.config import TrainConfig
    from brainrecon.train.trainer import train

    config = validate_config(TrainConfig, {
        "model": {"kind": "ridge", "alphas": [100.0, 1000.0, 10000.0], "folds": 3},
        "targets": {"clip": "simworld", "image_tokens": True}, "subjects": ["subj01"],
        "eval": {"way": 100, "draws": 5}})
    run = train(config, train_world, tmp_path_factory.mktemp("runs") / "ridge", progress=False)
    final_evaluation(run)
    return run
