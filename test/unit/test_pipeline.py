"""PerceptionPipeline on the tiny random-weight models, model choice (pretrained / tiny / auto) and the
parameter file schema."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dino_vla import config
from dino_vla.config import ConfigError, load_config, validate_params
from dino_vla.instruction import InstructionError, parse_instruction
from dino_vla.models.random_init import is_random_model
from dino_vla.pipeline import PerceptionPipeline, PerceptionResult, choose_models
from support.models import CallCounter, with_settings

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "config" / "perception.yaml"
UNKNOWN_IDS = {"features": "dino-vla-tests/no-dinov2", "detector": "dino-vla-tests/no-gdino",
               "segmenter": "dino-vla-tests/no-sam"}


def make_params(models: dict[str, str], **detector) -> dict[str, dict]:
    """Validated node parameters with the given model per stage (the form load_config returns)."""
    params = {node: config.defaults(node) for node in config.NODE_PARAMS}
    for stage, model in models.items():
        params[stage] = validate_params(stage, {"model": model, "device": "cpu",
                                                **(detector if stage == "detector" else {})})
    return params


@pytest.fixture(scope="module")
def tiny_params(tiny_models):
    return make_params({"features": tiny_models.features, "detector": tiny_models.detector,
                        "segmenter": tiny_models.segmenter}, box_threshold=0.0, text_threshold=0.0)


@pytest.fixture(scope="module")
def pipeline(tiny_params) -> PerceptionPipeline:
    return PerceptionPipeline.from_config(tiny_params)


@pytest.fixture(scope="module")
def detector_only(tiny_params) -> PerceptionPipeline:
    return PerceptionPipeline.from_config(tiny_params, stages=("detector",))


# --------------------------------------------------------------------------- running


def test_from_config_uses_the_configured_models_and_settings(pipeline, tiny_models):
    assert pipeline.feature_extractor.name == tiny_models.features
    assert pipeline.detector.name == tiny_models.detector
    assert pipeline.segmenter.name == tiny_models.segmenter
    d = pipeline.detector
    assert (d.box_threshold, d.text_threshold, d.nms_iou, d.max_detections) == (0.0, 0.0, 0.5, 20)


@pytest.mark.parametrize("which", ["coffee", "odd"])
def test_run_gives_aligned_results(pipeline, coffee, odd_image, which):
    image = coffee if which == "coffee" else odd_image
    h, w = image.shape[:2]
    result = pipeline.run(image, "pick up the cup")
    assert isinstance(result, PerceptionResult)
    assert result.query.phrases == ("cup",)
    assert result.features is not None and result.features.cls.ndim == 1
    dets = result.detections
    assert len(dets) > 0 and dets.image_size == (h, w) and set(dets.phrases) == {"cup"}
    assert len(dets) <= pipeline.detector.max_detections
    assert result.masks is not None and len(result.masks) == len(dets)
    assert result.masks.masks.shape == (len(dets), h, w)
    assert set(result.timings_ms) == {"features", "detector", "segmenter", "total"}
    assert all(t >= 0 for t in result.timings_ms.values())
    stages = sum(v for k, v in result.timings_ms.items() if k != "total")
    assert result.timings_ms["total"] == pytest.approx(stages)


def test_run_matches_the_stages_run_one_by_one(pipeline, coffee):
    result = pipeline.run(coffee, "grab the red mug next to the laptop")
    query = parse_instruction("grab the red mug next to the laptop")
    assert result.query == query
    dets = pipeline.detect(coffee, query)
    np.testing.assert_array_equal(result.detections.boxes, dets.boxes)
    assert set(dets.phrases) <= {"red mug", "laptop"}
    np.testing.assert_array_equal(result.masks.masks, pipeline.segment(coffee, dets).masks)
    np.testing.assert_array_equal(result.features.cls, pipeline.extract_features(coffee).cls)
    # a parsed query is accepted as well as a string
    np.testing.assert_array_equal(pipeline.run(coffee, query).detections.boxes, dets.boxes)


@pytest.mark.parametrize("view", ["bgr to rgb", "crop"])
def test_run_on_non_contiguous_views(pipeline, coffee, view):
    """Camera frames often arrive as views (BGR -> RGB by [..., ::-1], crops): same result as a copy."""
    bgr = np.ascontiguousarray(coffee[..., ::-1])
    image = bgr[..., ::-1] if view == "bgr to rgb" else coffee[50:383, 20:537]
    assert not image.flags["C_CONTIGUOUS"]
    a, b = pipeline.run(image, "pick up the cup"), pipeline.run(image.copy(), "pick up the cup")
    np.testing.assert_array_equal(a.features.patch_tokens, b.features.patch_tokens)
    np.testing.assert_array_equal(a.detections.boxes, b.detections.boxes)
    np.testing.assert_array_equal(a.masks.masks, b.masks.masks)


@pytest.mark.parametrize("shape", [(2, 2), (3, 500), (500, 3)])
def test_run_on_tiny_and_thin_images(pipeline, shape):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    result = pipeline.run(image, "pick up the cup")
    assert result.detections.image_size == shape
    assert result.masks.masks.shape == (len(result.detections), *shape)
    x0, y0, x1, y1 = result.detections.boxes.T
    assert (x1 <= shape[1]).all() and (y1 <= shape[0]).all() and (x0 >= 0).all() and (y0 >= 0).all()


def test_run_without_detections_skips_segmentation(pipeline, coffee):
    strict = PerceptionPipeline(detector=with_settings(pipeline.detector, box_threshold=1.0),
                                segmenter=pipeline.segmenter)
    with CallCounter(pipeline.segmenter.model) as counter:
        result = strict.run(coffee, "pick up the cup")
    assert len(result.detections) == 0 and counter.calls == 0
    assert result.masks.masks.shape == (0, *coffee.shape[:2])


def test_detector_only_pipeline(detector_only, coffee):
    assert detector_only.feature_extractor is None and detector_only.segmenter is None
    result = detector_only.run(coffee, "pick up the cup")
    assert result.features is None and result.masks is None and len(result.detections) > 0
    assert set(result.timings_ms) == {"detector", "total"}


@pytest.mark.parametrize("method", ["extract_features", "segment"])
def test_missing_stage_is_a_clear_error(detector_only, coffee, method):
    args = (coffee,) if method == "extract_features" else (
        coffee, detector_only.detect(coffee, parse_instruction("pick up the cup")))
    stage = "features" if method == "extract_features" else "segmenter"
    with pytest.raises(RuntimeError, match=f"built without the {stage} stage"):
        getattr(detector_only, method)(*args)


def test_unknown_stage_is_rejected(tiny_params):
    with pytest.raises(ValueError, match="unknown stage"):
        PerceptionPipeline.from_config(tiny_params, stages=("detector", "tracker"))


BAD_IMAGES = {
    "float image": np.zeros((40, 60, 3), np.float32),
    "2-D image": np.zeros((40, 60), np.uint8),
    "RGBA image": np.zeros((40, 60, 4), np.uint8),
    "1x1 image": np.zeros((1, 1, 3), np.uint8),
    "a list": np.zeros((40, 60, 3), np.uint8).tolist(),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_run_rejects_bad_images(pipeline, name):
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB image|image too small"):
        pipeline.run(BAD_IMAGES[name], "pick up the cup")


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
@pytest.mark.parametrize("method", ["extract_features", "detect"])
def test_stages_reject_bad_images(pipeline, name, method):
    args = (BAD_IMAGES[name],) if method == "extract_features" else (
        BAD_IMAGES[name], parse_instruction("pick up the cup"))
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB image|image too small"):
        getattr(pipeline, method)(*args)


def test_segment_rejects_a_list_image(pipeline, coffee):
    dets = pipeline.detect(coffee, parse_instruction("pick up the cup"))
    with pytest.raises(ValueError, match="expected an"):
        pipeline.segment(coffee.tolist(), dets)


def test_segment_rejects_detections_of_another_image(pipeline, coffee, odd_image):
    dets = pipeline.detect(coffee, parse_instruction("pick up the cup"))
    with pytest.raises(ValueError, match="detections are for a"):
        pipeline.segment(odd_image, dets)


@pytest.mark.parametrize("instruction", [
    "", "   ", "the cup", "pick up it", "pick up the", "x" * 501,
    42,
])
def test_run_rejects_invalid_instructions(pipeline, coffee, instruction):
    with pytest.raises(InstructionError):
        pipeline.run(coffee, instruction)


# --------------------------------------------------------------------------- model choice


@pytest.fixture
def tiny_cache(monkeypatch, tiny_cache_home):
    """Point default_cache_root() at the session's tiny models, so that choose_models builds nothing
    in the user's cache and returns the directories the other tests load."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tiny_cache_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_choose_tiny(tiny_cache, tiny_models):
    params = make_params(UNKNOWN_IDS, box_threshold=0.42)
    choice = choose_models(params, "tiny")
    assert choice.random_weights is True
    assert choice.notice and "RANDOM" in choice.notice and "NOT meaningful" in choice.notice
    for stage in UNKNOWN_IDS:
        assert choice.params[stage]["model"] == getattr(tiny_models, stage)
        assert is_random_model(choice.params[stage]["model"])
    assert choice.params["detector"]["box_threshold"] == 0.42  # only the model changes
    assert params["detector"]["model"] == UNKNOWN_IDS["detector"]  # the input is not modified


def test_choose_auto_falls_back_when_weights_are_unavailable(tiny_cache, tiny_models):
    params = make_params({**UNKNOWN_IDS, "features": tiny_models.features})
    choice = choose_models(params, "auto")
    assert choice.random_weights is True
    assert choice.notice is not None
    assert UNKNOWN_IDS["detector"] in choice.notice and UNKNOWN_IDS["segmenter"] in choice.notice
    assert tiny_models.features not in choice.notice, "an available model is not 'missing'"
    assert "NOT meaningful" in choice.notice and "save_pretrained" in choice.notice
    assert {choice.params[s]["model"] for s in UNKNOWN_IDS} == {
        tiny_models.features, tiny_models.detector, tiny_models.segmenter}
    # the fallback loads
    assert PerceptionPipeline.from_config(choice.params, stages=("detector",)).detector is not None


def test_choose_auto_keeps_available_models(tiny_cache, tiny_params):
    choice = choose_models(tiny_params, "auto")
    assert choice.random_weights is False and choice.notice is None
    assert choice.params == tiny_params


def test_choose_auto_only_checks_the_requested_stages(tiny_cache, tiny_models):
    params = make_params({**UNKNOWN_IDS, "detector": tiny_models.detector})
    choice = choose_models(params, "auto", stages=("detector",))
    assert choice.random_weights is False and choice.notice is None
    assert choice.params == params


def test_choose_pretrained_and_unknown_choice(tiny_cache):
    params = make_params(UNKNOWN_IDS)
    choice = choose_models(params, "pretrained")
    assert (choice.params, choice.random_weights, choice.notice) == (params, False, None)
    with pytest.raises(ValueError, match="models must be one of"):
        choose_models(params, "huge")


# --------------------------------------------------------------------------- parameter file


def test_shipped_config_is_valid():
    """Every node section of the shipped files is read, and every value in them is what load_config
    returns (values are not hard-coded here: the files are meant to be edited)."""
    import yaml

    files = [SHIPPED_CONFIG, *(REPO / "config" / name for name in ("pick.yaml", "policy.yaml", "sim.yaml"))]
    params = load_config(*files)
    assert set(params) == set(config.NODE_PARAMS)
    sections: dict = {}
    for path in files:  # later files override earlier ones, as load_config and --params-file do
        for key, section in yaml.safe_load(path.read_text()).items():
            sections.setdefault(str(key).rsplit("/", 1)[-1], {}).update(section["ros__parameters"])
    assert set(params) == set(sections), "the shipped files configure every node"
    for node, values in params.items():
        assert set(values) == set(config.defaults(node))
        for name, value in sections[node].items():
            expected = tuple(value) if isinstance(value, list) else value
            assert values[name] == expected, f"{node}.{name}"
            assert type(values[name]) is type(config.defaults(node)[name]), f"{node}.{name}"
    parse_instruction(params["detector"]["instruction"])


def test_default_config_path_is_the_shipped_file():
    """The source checkout's config/perception.yaml, or its installed copy (`colcon test` runs the tests on the
    install, where the module is not a symlink into the checkout)."""
    path = config.default_config_path()
    assert path.resolve() == SHIPPED_CONFIG.resolve() or (path.name == SHIPPED_CONFIG.name
                                                          and path.read_bytes() == SHIPPED_CONFIG.read_bytes())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("key", ["detector", "/detector", "/**/detector", "/robot/detector"])
def test_config_node_keys(tmp_path, key):
    path = _write(tmp_path, f"{key}:\n  ros__parameters:\n    box_threshold: 0.6\n    max_detections: 3\n"
                            "other_node:\n  ros__parameters:\n    anything: 1\n")
    params = load_config(path)
    assert params["detector"]["box_threshold"] == 0.6 and params["detector"]["max_detections"] == 3
    assert params["detector"]["nms_iou"] == 0.5  # default for what the file leaves out
    assert params["features"] == config.defaults("features")


def test_config_int_accepted_for_float(tmp_path):
    path = _write(tmp_path, "detector:\n  ros__parameters:\n    box_threshold: 1\n")
    value = load_config(path)["detector"]["box_threshold"]
    assert value == 1.0 and isinstance(value, float)


@pytest.mark.parametrize("body, message", [
    ("detector:\n  ros__parameters:\n    box_treshold: 0.3\n", "unknown parameter.*box_treshold"),
    ("detector:\n  ros__parameters:\n    box_threshold: 1.5\n", r"box_threshold: 1\.5 outside"),
    ("detector:\n  ros__parameters:\n    nms_iou: -0.1\n", "nms_iou.*outside"),
    ("detector:\n  ros__parameters:\n    box_threshold: high\n", "box_threshold: expected float"),
    ("detector:\n  ros__parameters:\n    max_detections: 5.0\n", "max_detections: expected int"),
    ("detector:\n  ros__parameters:\n    max_detections: true\n", "max_detections: expected int"),
    ("detector:\n  ros__parameters:\n    max_detections: 0\n", "max_detections.*outside"),
    ("features:\n  ros__parameters:\n    dtype: fp8\n", "dtype.*not one of"),
    ("features:\n  ros__parameters:\n    device: gpu\n", "device.*does not match"),
    ("segmenter:\n  ros__parameters:\n    model: 7\n", "model: expected str"),
    ("segmenter:\n  ros__parameters:\n    model: ' /models/sam'\n", "model.*does not match"),
    ("segmenter:\n  ros__parameters:\n    model: ''\n", "model.*does not match"),
    ("features:\n  ros__parameters:\n    torch_threads: -1\n", "torch_threads.*outside"),
    ("detector:\n  box_threshold: 0.3\n", "ros__parameters"),
    ("detector: [1, 2\n", "cannot read parameter file"),
    ("detector:\n  ros__parameters:\n    box_threshold: 0.3\n   bad indent: [\n",
     "cannot read parameter file"),
    ("", "expected a mapping"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_config_errors(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(_write(tmp_path, body))
    assert "Traceback" not in str(info.value)


def test_config_model_path_may_contain_spaces(tmp_path):
    path = _write(tmp_path, "segmenter:\n  ros__parameters:\n    model: /home/me/My Models/sam-vit-base\n")
    assert load_config(path)["segmenter"]["model"] == "/home/me/My Models/sam-vit-base"


def test_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read parameter file"):
        load_config(tmp_path / "missing.yaml")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_moving_the_models_keeps_the_results(pipeline, coffee):
    """What a managed node's deactivate/activate does (models to the CPU and back): same outputs after; nothing to
    give back when no model was on a GPU. Measuring the GPU memory given back needs a GPU (not here)."""
    before = pipeline.run(coffee, "pick up the cup")
    assert str(pipeline.device) == "cpu" and len(pipeline.models()) == 3
    assert pipeline.to("cpu") == 0
    after = pipeline.run(coffee, "pick up the cup")
    np.testing.assert_allclose(after.features.patch_tokens, before.features.patch_tokens, rtol=1e-6)
    np.testing.assert_array_equal(after.detections.boxes, before.detections.boxes)
    np.testing.assert_array_equal(after.masks.masks, before.masks.masks)
