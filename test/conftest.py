import os

# Never let a test reach for a model hub: every model is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight models of the real architectures, written with save_pretrained once per run;
    every test loads them through the product's own loaders."""
    from dino_vla.models.random_init import build_random_models

    return build_random_models("tiny", tmp_path_factory.mktemp("tiny-models"))
