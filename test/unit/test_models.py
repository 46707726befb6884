"""Model adapters (DINOv2 features, Grounding DINO detector, SAM segmenter, text encoder) and model
loading, on tiny random-weight models of the real architectures loaded through the product's loaders
(the text encoder is the real all-MiniLM-L6-v2 from its pip package)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dino_vla.instruction import InstructionError
from dino_vla.models.detector import GroundingDetector
from dino_vla.models.features import DinoFeatures
from dino_vla.models.loading import ModelUnavailableError, resolve_device, resolve_dtype
from dino_vla.models.segmenter import Segmenter
from dino_vla.models.text import TextEncoder
from dino_vla.types import Masks
from support.models import ODD_SHAPE, CallCounter, iou, max_same_phrase_iou, with_settings

PHRASES = ("cup", "table", "red mug")


# --------------------------------------------------------------------------- DINOv2 features


def test_features_shapes_and_values(features_model, image):
    f = features_model.extract(image)
    dim = features_model.model.config.hidden_size
    assert f.cls.shape == (dim,) and f.dim == dim
    rows, cols = f.input_size[0] // f.patch_size, f.input_size[1] // f.patch_size
    assert rows > 0 and cols > 0
    assert f.patch_tokens.shape == (rows, cols, dim) and f.grid == (rows, cols)
    assert f.patch_size == features_model.model.config.patch_size == 14
    for array in (f.cls, f.patch_tokens):
        assert array.dtype == np.float32
        assert np.isfinite(array).all()
    assert f.model == features_model.name


def test_features_are_the_models_cls_and_row_major_patch_tokens(features_model, coffee):
    """Token 0 is the CLS embedding and the rest, in order, is the row-major patch grid."""
    from PIL import Image

    f = features_model.extract(coffee)
    pixels = features_model.processor(images=Image.fromarray(coffee), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[2:]) == f.input_size
    with torch.inference_mode():
        hidden = features_model.model(pixel_values=pixels).last_hidden_state[0].numpy()
    np.testing.assert_allclose(f.cls, hidden[0], rtol=1e-5, atol=1e-5)
    rows, cols = f.grid
    np.testing.assert_allclose(f.patch_tokens[0, 1], hidden[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.patch_tokens[1, 0], hidden[1 + cols], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.patch_tokens.reshape(rows * cols, -1), hidden[1:], rtol=1e-5, atol=1e-5)


def test_features_deterministic(features_model, image):
    a, b = features_model.extract(image), features_model.extract(image.copy())
    np.testing.assert_array_equal(a.cls, b.cls)
    np.testing.assert_array_equal(a.patch_tokens, b.patch_tokens)


def test_features_differ_between_images(features_model, coffee, odd_image):
    a, b = features_model.extract(coffee), features_model.extract(odd_image)
    assert a.patch_tokens.shape == b.patch_tokens.shape
    assert not np.allclose(a.cls, b.cls)
    assert not np.allclose(a.patch_tokens, b.patch_tokens)


# --------------------------------------------------------------------------- Grounding DINO


def test_detector_load_applies_settings(tiny_models):
    det = GroundingDetector.load(tiny_models.detector, box_threshold=0.4, text_threshold=0.3,
                                 nms_iou=0.6, max_detections=7)
    assert (det.box_threshold, det.text_threshold, det.nms_iou, det.max_detections) == (0.4, 0.3, 0.6, 7)
    assert not det.model.training


@pytest.mark.parametrize("box_threshold", [0.0, 0.5, 0.99])
def test_detections_well_formed(detector, image, box_threshold):
    h, w = image.shape[:2]
    d = with_settings(detector, box_threshold=box_threshold).detect(image, PHRASES)
    assert len(d) > 0, "random weights give confident boxes; none at all means the path is broken"
    assert d.image_size == (h, w)
    assert d.boxes.shape == (len(d), 4) and d.boxes.dtype == np.float32
    assert d.scores.shape == (len(d),) and d.scores.dtype == np.float32
    x0, y0, x1, y1 = d.boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w).all() and (y1 <= h).all()
    assert (x0 <= x1).all() and (y0 <= y1).all()
    assert (np.diff(d.scores) <= 0).all(), "scores must be best first"
    assert (d.scores >= box_threshold).all() and (d.scores <= 1).all()
    assert set(d.phrases) <= set(PHRASES)


def test_raising_box_threshold_only_drops_boxes(detector, image):
    """Greedy NMS keeps the same boxes above a higher threshold, so each result is the prefix of the
    one at a lower threshold whose scores pass the higher one."""
    results = {t: with_settings(detector, box_threshold=t).detect(image, PHRASES)
               for t in (0.0, 0.5, 0.99999)}
    counts = [len(results[t]) for t in (0.0, 0.5, 0.99999)]
    assert counts == sorted(counts, reverse=True), counts
    low = results[0.0]
    for t in (0.5, 0.99999):
        n = len(results[t])
        assert (low.scores[n:] <= t).all()
        np.testing.assert_array_equal(results[t].boxes, low.boxes[:n])
        np.testing.assert_array_equal(results[t].scores, low.scores[:n])
        assert results[t].phrases == low.phrases[:n]


@pytest.mark.parametrize("max_detections", [1, 3, 5])
def test_max_detections_keeps_the_best(detector, image, max_detections):
    full = detector.detect(image, PHRASES)
    assert len(full) > 5
    capped = with_settings(detector, max_detections=max_detections).detect(image, PHRASES)
    assert len(capped) == max_detections
    np.testing.assert_array_equal(capped.boxes, full.boxes[:max_detections])
    assert capped.phrases == full.phrases[:max_detections]


def test_detector_deterministic(detector, image):
    a, b = detector.detect(image, PHRASES), detector.detect(image.copy(), list(PHRASES))
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.phrases == b.phrases


@pytest.mark.parametrize("nms_iou", [0.0, 0.1, 0.3, 0.5])
def test_nms_no_kept_pair_of_one_phrase_overlaps_above_nms_iou(detector, image, nms_iou):
    d = with_settings(detector, nms_iou=nms_iou).detect(image, PHRASES)
    assert len(d) > 0
    assert max_same_phrase_iou(d) <= nms_iou + 1e-5


def test_nms_suppresses_on_the_tiny_model(detector, image):
    """Without suppression (nms_iou=1) the random model gives overlapping boxes, so the NMS tests
    above exercise suppression rather than passing vacuously."""
    unsuppressed = with_settings(detector, nms_iou=1.0).detect(image, PHRASES)
    suppressed = with_settings(detector, nms_iou=0.1).detect(image, PHRASES)
    assert max_same_phrase_iou(unsuppressed) > 0.1
    assert len(suppressed) < len(unsuppressed)


@pytest.mark.parametrize("nms_iou, labels, expected", [
    # boxes: 0 and 1 overlap with IoU 1/3 (fractional coordinates), 2 is apart
    (0.5, ("a", "a", "a"), [0, 1, 2]),
    (0.3, ("a", "a", "a"), [0, 2]),
    (0.3, ("a", "b", "a"), [0, 1, 2]),  # suppression is per phrase
    (0.0, ("a", "a", "a"), [0, 2]),
])
def test_suppress_on_known_boxes(nms_iou, labels, expected):
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.5, 1.0], [5.0, 5.0, 6.0, 6.0]], np.float32)
    assert iou(boxes[0], boxes[1]) == pytest.approx(1 / 3)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    det = GroundingDetector(None, None, "synthetic", nms_iou=nms_iou, max_detections=10)
    assert det._suppress(boxes, scores, list(labels), [0, 1, 2]) == expected


def test_boxes_without_a_phrase_label_are_dropped(detector, coffee):
    """text_threshold 1 leaves no prompt token to label a box with: nothing is returned, and the
    empty result is well formed."""
    d = with_settings(detector, text_threshold=1.0).detect(coffee, PHRASES)
    assert len(d) == 0 and d.boxes.shape == (0, 4) and d.scores.shape == (0,)
    assert d.image_size == coffee.shape[:2]


@pytest.mark.parametrize("label, expected", [
    ("red mug", "red mug"),
    ("mug", "red mug"),
    ("[SEP] cup [PAD]", "cup"),
    ("cup table", "cup"),        # a label spanning two phrases: the earliest on a tie
    ("red mug cup", "red mug"),  # the phrase sharing most words
    ("", None),
    ("[SEP]", None),
    ("laptop", None),
])
def test_match_phrase(label, expected):
    from dino_vla.models.detector import _match_phrase

    assert _match_phrase(label, ("cup", "table", "red mug")) == expected


@pytest.mark.parametrize("requested", [["  Cup "], ["CUP"], ["cup", " cup"]])
def test_phrases_are_normalised(detector, coffee, requested):
    reference = detector.detect(coffee, ["cup"])
    d = detector.detect(coffee, requested)
    assert len(d) > 0 and set(d.phrases) == {"cup"}
    np.testing.assert_array_equal(d.boxes, reference.boxes)


@pytest.mark.parametrize("requested, expected", [(["  Red   Mug "], "red mug"), (["cup."], "cup")])
def test_phrases_normalised_like_the_prompt(detector, coffee, requested, expected):
    d = detector.detect(coffee, requested)
    assert len(d) > 0 and set(d.phrases) == {expected}


@pytest.mark.parametrize("phrases", [[], ()])
def test_empty_phrase_list_is_an_instruction_error(detector, coffee, phrases):
    with pytest.raises(InstructionError, match="non-empty list of phrases"):
        detector.detect(coffee, phrases)


@pytest.mark.parametrize("phrases", ["cup", [None]])
def test_phrases_not_a_list_of_strings_is_an_instruction_error(detector, coffee, phrases):
    with pytest.raises(InstructionError):
        detector.detect(coffee, phrases)


def test_prompt_longer_than_the_text_encoder_reads_is_an_instruction_error(detector, coffee):
    limit = detector.model.config.max_text_len
    phrases = [f"object number {i}" for i in range(limit)]
    with pytest.raises(InstructionError, match=f"at most {limit} tokens"):
        detector.detect(coffee, phrases)
    fitting = phrases[: (limit - 2) // 4]  # "object number N ." is 4 tokens, plus [CLS] and [SEP]
    assert detector.check_phrases(fitting) == tuple(fitting)
    detector.detect(coffee, fitting)


# --------------------------------------------------------------------------- SAM


def _boxes_for(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.array([[10, 20, 200, 180], [0, 0, w, h], [w / 2, h / 3, w - 1, h - 5],
                     [100.5, 50.25, 140.5, 91.75]], np.float32)


@pytest.mark.parametrize("n_boxes", [1, 4])
def test_masks_at_original_size(segmenter, image, n_boxes):
    h, w = image.shape[:2]
    m = segmenter.segment(image, _boxes_for(image)[:n_boxes])
    assert len(m) == n_boxes
    assert m.masks.shape == (n_boxes, h, w) and m.masks.dtype == bool
    assert m.scores.shape == (n_boxes,) and np.isfinite(m.scores).all()


def test_single_box_as_flat_array(segmenter, odd_image):
    m = segmenter.segment(odd_image, _boxes_for(odd_image)[1])  # shape (4,)
    assert m.masks.shape == (1, *ODD_SHAPE)


@pytest.mark.parametrize("boxes", [np.zeros((0, 4), np.float32), [], np.zeros(0)])
def test_zero_boxes_skip_the_model(segmenter, image, boxes):
    with CallCounter(segmenter.model) as counter:
        m = segmenter.segment(image, boxes)
    assert counter.calls == 0
    assert m.masks.shape == (0, *image.shape[:2]) and m.masks.dtype == bool
    assert m.scores.shape == (0,)


def test_one_image_encoding_for_several_boxes(segmenter, image):
    with CallCounter(segmenter.model.vision_encoder) as counter:
        m = segmenter.segment(image, _boxes_for(image))
    assert len(m) == 4
    assert counter.calls == 1


def test_batched_masks_equal_masks_of_single_boxes(segmenter, image):
    boxes = _boxes_for(image)
    batched = segmenter.segment(image, boxes)
    for i, box in enumerate(boxes):
        alone = segmenter.segment(image, box[None])
        agreement = (alone.masks[0] == batched.masks[i]).mean()
        assert agreement >= 0.999, f"box {i}: only {agreement:.4%} of pixels agree"
        assert alone.scores[0] == pytest.approx(batched.scores[i], abs=1e-4)
    # the boxes give different masks, so the comparison above could catch a mix-up
    assert not np.array_equal(batched.masks[0], batched.masks[1])


def test_segmenter_deterministic(segmenter, image):
    boxes = _boxes_for(image)
    a, b = segmenter.segment(image, boxes), segmenter.segment(image.copy(), boxes.copy())
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.scores, b.scores)


# --------------------------------------------------------------------------- Masks.label_image


def _masks(*pixel_sets, shape=(4, 5)) -> Masks:
    masks = np.zeros((len(pixel_sets), *shape), bool)
    for k, pixels in enumerate(pixel_sets):
        for y, x in pixels:
            masks[k, y, x] = True
    return Masks(masks, np.ones(len(pixel_sets), np.float32))


def test_label_image_background_and_labels():
    m = _masks([(0, 0), (0, 1)], [(3, 4)], [(2, 2)])
    labels = m.label_image()
    assert labels.dtype == np.uint8 and labels.shape == (4, 5)
    expected = np.zeros((4, 5), np.uint8)
    expected[0, 0] = expected[0, 1] = 1
    expected[3, 4] = 2
    expected[2, 2] = 3
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("scores, winner", [([0.2, 0.9, 0.5], 2), ([0.9, 0.2, 0.5], 1),
                                            ([0.2, 0.5, 0.9], 3)])
def test_label_image_overlap_goes_to_higher_score(scores, winner):
    m = _masks([(1, 1), (0, 0)], [(1, 1), (0, 1)], [(1, 1), (0, 2)])
    labels = m.label_image(np.array(scores, np.float32))
    assert labels[1, 1] == winner
    assert (labels[0, 0], labels[0, 1], labels[0, 2]) == (1, 2, 3)  # unshared pixels keep their label
    assert labels[3, 3] == 0


def test_label_image_empty_and_many_masks():
    empty = Masks(np.zeros((0, 3, 2), bool), np.zeros(0, np.float32)).label_image()
    assert empty.shape == (3, 2) and empty.dtype == np.uint8 and not empty.any()
    masks = np.zeros((256, 1, 256), bool)
    masks[np.arange(256), 0, np.arange(256)] = True
    labels = Masks(masks, np.ones(256, np.float32)).label_image()
    assert labels.dtype != np.uint8, "label 256 does not fit in uint8"
    np.testing.assert_array_equal(labels[0], np.arange(1, 257))
    assert Masks(masks[:255], np.ones(255, np.float32)).label_image().dtype == np.uint8


# --------------------------------------------------------------------------- text encoder


def test_text_tokens_and_pooled(text_encoder):
    e = text_encoder.encode("pick up the cup")
    assert text_encoder.dim == 384
    assert e.tokens.ndim == 2 and e.tokens.shape[1] == 384 and e.tokens.dtype == np.float32
    assert e.tokens.shape[0] == len(e.token_strings)
    assert e.token_strings[0] == "[CLS]" and e.token_strings[-1] == "[SEP]" and "cup" in e.token_strings
    assert e.pooled.shape == (384,) and e.pooled.dtype == np.float32
    assert np.linalg.norm(e.pooled) == pytest.approx(1.0, abs=1e-5)
    assert e.text == "pick up the cup"


def test_text_similarity_is_meaningful(text_encoder):
    cup, mug, door = (text_encoder.encode(t).pooled
                      for t in ("pick up the cup", "grab the mug", "open the door"))
    assert float(cup @ mug) > float(cup @ door) + 0.1


def test_text_is_truncated(text_encoder):
    e = text_encoder.encode("pick up the cup " * 40)
    assert e.tokens.shape == (64, 384) and len(e.token_strings) == 64
    assert np.linalg.norm(e.pooled) == pytest.approx(1.0, abs=1e-5)


def test_text_deterministic(text_encoder):
    a, b = text_encoder.encode("grab the red mug"), text_encoder.encode("grab the red mug")
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.pooled, b.pooled)


# --------------------------------------------------------------------------- loading errors

LOADERS = {
    "features": (DinoFeatures.load, "features.model"),
    "detector": (GroundingDetector.load, "detector.model"),
    "segmenter": (Segmenter.load, "segmenter.model"),
    "text": (TextEncoder.load, "text.model"),
}


@pytest.fixture(params=["missing directory", "empty directory", "unknown hub id"])
def unavailable_source(request, tmp_path) -> str:
    if request.param == "missing directory":
        return str(tmp_path / "no" / "such" / "dir")
    if request.param == "empty directory":
        return str(tmp_path)
    return "dino-vla-tests/no-such-model"


@pytest.mark.parametrize("stage", sorted(LOADERS))
def test_unavailable_model_is_one_clear_error(stage, unavailable_source, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load, parameter = LOADERS[stage]
    with pytest.raises(ModelUnavailableError) as info:
        load(unavailable_source)
    message = str(info.value)
    assert repr(unavailable_source) in message
    assert parameter in message
    assert "save_pretrained" in message
    # a hub id can be downloaded; a local directory can only be (re)written with save_pretrained
    hub_id = not unavailable_source.startswith("/")
    assert (f"hf download {unavailable_source}" in message) == hub_id
    assert "Traceback" not in message and 'File "' not in message
    assert "\n" not in message
    # raised "from None": no chained traceback of the underlying library error is printed
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_model_unavailable_error_is_a_runtime_error():
    assert issubclass(ModelUnavailableError, RuntimeError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_gpu_is_a_clear_error(device):
    with pytest.raises(ValueError, match=r"no CUDA GPU.*'auto' or 'cpu'"):
        resolve_device(device)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("banana")


@pytest.mark.parametrize("dtype", ["fp8", "float64", "half", ""])
def test_unknown_dtype_is_rejected(dtype):
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype(dtype, torch.device("cpu"))


@pytest.mark.parametrize("dtype, expected", [("auto", torch.float32), ("float32", torch.float32),
                                             ("bfloat16", torch.bfloat16)])
def test_dtype_resolution_on_cpu(dtype, expected):
    assert resolve_dtype(dtype, torch.device("cpu")) == expected


def test_the_prompt_encoding_is_computed_once_per_prompt_with_identical_results(tiny_models, coffee):
    """Grounding DINO's text backbone runs once per prompt (PromptCache); every frame's boxes and scores equal an
    uncached model's, bit for bit, also after the prompt changes and changes back."""
    from dino_vla.models.detector import GroundingDetector

    cached = GroundingDetector.load(tiny_models.detector, "cpu", "float32", box_threshold=0.0, text_threshold=0.0)
    uncached = GroundingDetector.load(tiny_models.detector, "cpu", "float32", box_threshold=0.0, text_threshold=0.0)
    uncached.model.model.text_backbone.forward = uncached.prompt_cache._forward   # the backbone as transformers has it
    frames = [coffee, coffee[::-1].copy(), coffee[:, ::-1].copy()]
    for phrases in (["cup"], ["red mug", "laptop"], ["cup"]):
        for frame in frames:
            a, b = cached.detect(frame, phrases), uncached.detect(frame, phrases)
            assert len(a) > 0 and a.phrases == b.phrases
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.scores, b.scores)
    assert (cached.prompt_cache.misses, cached.prompt_cache.hits) == (2, 7)   # "cup" is still cached the 2nd time
    assert uncached.prompt_cache.misses == uncached.prompt_cache.hits == 0


def test_the_prompt_cache_steps_aside_while_training(tiny_models):
    """With gradients on (fine-tuning) every call runs the backbone, so gradients reach its weights."""
    import torch

    from dino_vla.models.detector import GroundingDetector

    detector = GroundingDetector.load(tiny_models.detector, "cpu", "float32")
    tokens = detector.processor.tokenizer("cup .", return_tensors="pt")
    backbone = detector.model.model.text_backbone
    with torch.enable_grad():
        backbone(tokens["input_ids"]).last_hidden_state.sum().backward()
        backbone(tokens["input_ids"])
    assert detector.prompt_cache.hits == detector.prompt_cache.misses == 0
    assert any(p.grad is not None for p in backbone.parameters())
