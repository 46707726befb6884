import os
import signal

# Never let a test reach for a model hub: every model is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest

# A test past 300 s is hung: pytest.ini's faulthandler_timeout prints every thread's stack, then SIGALRM's
# default action ends the run. Both work while C code holds the GIL (a Fast DDS take() spinning forever was
# seen to), which a watchdog written in Python cannot.
HUNG_TEST_S = 330


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(HUNG_TEST_S)
    yield
    signal.alarm(0)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight models of the real architectures, written with save_pretrained once per run;
    every test loads them through the product's own loaders."""
    from dino_vla.models.random_init import build_random_models

    return build_random_models("tiny", tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def dds_env():
    """The loopback DDS profile on a random domain, for this test process (a participant too) and the
    node processes it starts."""
    import random

    import rclpy

    from dino_vla.dds import loopback_environment

    env = loopback_environment(domain_id=random.randint(1, 100))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    rclpy.init()
    yield env
    rclpy.shutdown()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
