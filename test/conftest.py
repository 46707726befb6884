"""Fixtures and guards of the whole suite. Tests are by layer: unit/ (in-process, ROS-free or single-process
conversions), dds/ (node processes over real Fast DDS: marked `dds`), e2e/ (the `dino-vla` commands run as a
user runs them: marked `slow`, and `dds` where they start nodes). Helpers that are not fixtures live in
support/ (on the path via pytest.ini's pythonpath)."""
import faulthandler
import os
import signal
import tempfile
import time
from pathlib import Path

# Never let a test reach for a model hub: every model is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# A test past 300 s is hung: faulthandler writes every thread's stack to HANG_REPORT, then SIGALRM's default
# action ends the run. Both work while C code holds the GIL (a Fast DDS take() spinning forever was seen to),
# which nothing written in Python can: a CI log once ended in such a dump with only pytest's outermost frames
# in its tail, and no test name. So the report is a file that starts with the running test's name, and `make test`
# (which names the file in DINO_VLA_HANG_REPORT) prints its name and the main thread's innermost frames last,
# where a CI log's tail shows them. Elsewhere the file is per process in the temporary directory (`pytest -v`
# names it in its header): a source tree may be read-only, and runs may share one.
HUNG_TEST_S = 300
HANG_REPORT = Path(os.environ.get("DINO_VLA_HANG_REPORT")
                   or Path(tempfile.gettempdir()) / f"dino_vla-hung-test-{os.getpid()}.txt")
_running: dict = {}   # the running test's open report and its deadline (time.monotonic())


def pytest_report_header(config):
    return f"a test past {HUNG_TEST_S} s is hung: its name and every thread's stack go to {HANG_REPORT}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    HANG_REPORT.parent.mkdir(parents=True, exist_ok=True)
    with open(HANG_REPORT, "w") as report:
        report.write(f"{item.nodeid}\n")
        report.flush()
        _running.update(report=report, deadline=time.monotonic() + HUNG_TEST_S)
        faulthandler.dump_traceback_later(HUNG_TEST_S, file=report)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(HUNG_TEST_S + 5)
        yield
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        _running.clear()
    HANG_REPORT.unlink(missing_ok=True)


@pytest.hookimpl(trylast=True)
def pytest_exception_interact():
    """pytest's faulthandler plugin cancels every pending dump when a test phase fails: a teardown that hangs
    after a failed test (a module's DDS graph going down) must still leave its stacks."""
    if _running:
        faulthandler.dump_traceback_later(max(_running["deadline"] - time.monotonic(), 1.0), file=_running["report"])


def pytest_collection_modifyitems(items):
    """The layer a test belongs to is its folder: dds/ tests are marked dds, e2e/ tests slow."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "dds" in parts:
            item.add_marker(pytest.mark.dds)
        if "e2e" in parts:
            item.add_marker(pytest.mark.slow)


def xdg_cache_home(base: Path) -> Path:
    """The XDG_CACHE_HOME under which ``default_cache_root()`` is the tiny models' root."""
    return base / "xdg-cache"


@pytest.fixture(scope="session")
def tiny_cache_home(tmp_path_factory) -> Path:
    return xdg_cache_home(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def tiny_models(tiny_cache_home):
    """Tiny random-weight models of the real architectures, written with save_pretrained once per run where
    `--models tiny` finds them when XDG_CACHE_HOME is tiny_cache_home; every test loads them through the
    product's own loaders."""
    from dino_vla.models.random_init import build_random_models

    return build_random_models("tiny", tiny_cache_home / "dino_vla" / "random-models")


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """The tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads
    waiting on each other turn a 30 ms forward pass into seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def features_model(tiny_models):
    from support.models import load_features

    return load_features(tiny_models.features)


@pytest.fixture(scope="session")
def detector(tiny_models):
    from support.models import load_detector

    return load_detector(tiny_models.detector)


@pytest.fixture(scope="session")
def segmenter(tiny_models):
    from support.models import load_segmenter

    return load_segmenter(tiny_models.segmenter)


@pytest.fixture(scope="session")
def text_encoder():
    from support.models import load_text

    return load_text()


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    import skimage.data

    image = skimage.data.coffee()
    assert image.shape == (400, 600, 3) and image.dtype == np.uint8
    return image


@pytest.fixture(scope="session")
def odd_image() -> np.ndarray:
    from support.models import ODD_SHAPE

    return np.random.default_rng(1234).integers(0, 256, (*ODD_SHAPE, 3), dtype=np.uint8)


@pytest.fixture(scope="session", params=["coffee", "odd"])
def image(request, coffee, odd_image) -> np.ndarray:
    """Both test images: the real photo and a random non-square odd-sized one."""
    return coffee if request.param == "coffee" else odd_image


@pytest.fixture(scope="module")
def dds_env():
    """The loopback DDS profile on a free ROS domain, held for the module (as the commands claim theirs), for
    this test process (a participant too) and the node processes it starts."""
    import rclpy

    from dino_vla.dds import claim_free_domain, loopback_environment

    with claim_free_domain() as domain:
        env = loopback_environment(domain_id=domain.domain_id)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        rclpy.init()
        yield env
        rclpy.shutdown()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
