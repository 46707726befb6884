"""The code paths meant for a GPU, exercised where they run on a CPU: half-precision weights, the attention
implementation each model class is loaded with, torch.compile behind the `compile` parameter, and inputs moved
to the model (pinned memory only for CUDA; on this CPU-only torch pinning raises, so a CPU run proves it is
not used). What ran on CUDA is said in the README's Benchmark section."""
import numpy as np
import torch

from dino_vla.config import validate_params
from dino_vla.instruction import parse_instruction
from dino_vla.models.detector import GroundingDetector
from dino_vla.models.features import DinoFeatures
from dino_vla.models.loading import to_model
from dino_vla.models.segmenter import Segmenter
from dino_vla.pipeline import STAGES, PerceptionPipeline

IMAGE = np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)
BOXES = np.array([[10, 10, 80, 90], [60, 20, 150, 110]], np.float32)


def test_inputs_reach_the_model_in_its_dtype_and_integers_stay_integers(tiny_models):
    model = DinoFeatures.load(tiny_models.features, "cpu", "bfloat16").model
    pixels, ids = torch.rand(1, 3, 4, 4), torch.tensor([[101, 2, 102]])
    moved = to_model(pixels, model)
    assert moved.dtype == torch.bfloat16 and moved.device.type == "cpu" and not moved.is_pinned()
    assert torch.allclose(moved.float(), pixels, atol=1e-2)
    assert to_model(ids, model).dtype == torch.long and torch.equal(to_model(ids, model), ids)


def test_attention_through_scaled_dot_product_where_transformers_has_it(tiny_models):
    assert DinoFeatures.load(tiny_models.features, "cpu").model.config._attn_implementation == "sdpa"
    assert Segmenter.load(tiny_models.segmenter, "cpu").model.config._attn_implementation == "sdpa"
    # Grounding DINO's transformers class has no SDPA path (its attention is deformable): loaded as it comes
    assert GroundingDetector.load(tiny_models.detector, "cpu").model.config._attn_implementation == "eager"


def test_every_stage_runs_in_bfloat16(tiny_models):
    params = {stage: validate_params(stage, {"model": getattr(tiny_models, stage), "device": "cpu",
                                             "dtype": "bfloat16"}) for stage in STAGES}
    pipeline = PerceptionPipeline.from_config(params)
    assert {m.dtype for m in pipeline.models()} == {torch.bfloat16}
    features = pipeline.extract_features(IMAGE)
    assert features.patch_tokens.dtype == np.float32 and np.isfinite(features.patch_tokens).all()
    detections = pipeline.detect(IMAGE, parse_instruction("pick up the cup"))
    assert detections.image_size == (120, 160) and detections.boxes.shape[1:] == (4,)
    masks = pipeline.segmenter.segment(IMAGE, BOXES)
    assert masks.masks.shape == (2, 120, 160) and np.isfinite(masks.scores).all()


def test_compile_parameter_compiles_each_stage_model_in_place(tiny_models):
    """Wiring only: torch.compile compiles at the first forward (minutes on these CPUs for even the tiny
    DINOv2), and what it pays is measured in the README's Benchmark section, not here."""
    params = {stage: validate_params(stage, {"model": getattr(tiny_models, stage), "device": "cpu",
                                             "compile": compile})
              for stage, compile in zip(STAGES, (True, False, True))}
    pipeline = PerceptionPipeline.from_config(params)
    compiled = [getattr(m, "_compiled_call_impl", None) is not None for m in pipeline.models()]
    assert compiled == [True, False, True]


def test_compile_is_a_read_only_parameter_of_every_model_node():
    for stage in STAGES:
        assert validate_params(stage, {})["compile"] is False
        assert validate_params(stage, {"compile": True})["compile"] is True


def test_torch_threads_zero_splits_the_cores_among_the_model_nodes(monkeypatch):
    from dino_vla.models.loading import MODEL_NODES_PER_CPU, set_torch_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
        assert set_torch_threads(0) == 16 // MODEL_NODES_PER_CPU == torch.get_num_threads()
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
        assert set_torch_threads(0) == 1 == torch.get_num_threads()   # never 0 threads
        assert set_torch_threads(3) == 3 == torch.get_num_threads()   # an explicit count is kept
    finally:
        torch.set_num_threads(before)
