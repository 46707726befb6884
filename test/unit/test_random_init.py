"""The random-weight models must cost what pretrained ones do: activations of a realistic scale, never the
denormal floats (below float32's smallest normal, 1.2e-38) that CPUs compute tens of times slower. SAM's
vision config initialises with std 1e-10 unless told otherwise, which made the real-size image encoder
run on activations of about 1e-8 that underflowed."""
import numpy as np
import pytest
import torch
from PIL import Image

from dino_vla.models.random_init import random_model

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


class _Enough(Exception):
    """Raised by a hook to end a forward pass once the layers checked have run."""


def _tensors(output) -> list[torch.Tensor]:
    """The floating-point tensors of a layer's output (Grounding DINO's layers return nested tuples)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


def _layer_peaks(model: torch.nn.Module, run, stop_after: int | None = None) -> dict[str, tuple[float, float]]:
    """Per transformer layer (every module whose class name ends in `Layer`): the largest |activation| of its
    output and the fraction of its non-zero outputs that are denormal. `stop_after` ends the forward after
    that many layers have run (SAM's encoder only takes 1024 x 1024 images)."""
    peaks: dict[str, tuple[float, float]] = {}

    def hook(name):
        def record(_module, _inputs, output):
            out = torch.cat([t.detach().float().flatten() for t in _tensors(output)])
            nonzero = out[out != 0].abs()
            peaks[name] = (float(out.abs().max()), float((nonzero < SMALLEST_NORMAL).float().mean()))
            if stop_after is not None and len(peaks) >= stop_after:
                raise _Enough
        return record

    for name, module in model.named_modules():
        if type(module).__name__.endswith("Layer"):
            module.register_forward_hook(hook(name))
    try:
        with torch.inference_mode():
            run()
    except _Enough:
        pass
    return peaks


def _photo(side: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8))


def _features(model, processor):
    return lambda: model(**processor(images=_photo(224), return_tensors="pt"))


def _detector(model, processor):
    # a small image: the cost of Swin-T, BERT-base and the 6 + 6 layer transformer stays affordable
    inputs = processor(images=_photo(256), text="a cup.", return_tensors="pt")
    inputs["pixel_values"] = torch.nn.functional.interpolate(inputs["pixel_values"], size=(256, 256))
    inputs["pixel_mask"] = torch.ones(1, 256, 256, dtype=torch.long)
    return lambda: model(**inputs)


def _segmenter(model, processor):
    inputs = processor(images=_photo(1024), input_boxes=[[[100.0, 100.0, 600.0, 700.0]]], return_tensors="pt")
    return lambda: model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                         multimask_output=False)


# the first three of SAM ViT-B's image encoder layers (two windowed, one global): the scale is set by its
# patch embedding and first layers, and all twelve at 1024 x 1024 would cost a few seconds more
CASES = {"features": (_features, None), "detector": (_detector, None), "segmenter": (_segmenter, 3)}


@pytest.mark.parametrize("size", ["tiny", "real"])
@pytest.mark.parametrize("stage", list(CASES))
def test_random_model_activations_have_a_realistic_scale_and_are_not_denormal(stage, size):
    model, processor = random_model(stage, size)
    inputs, stop_after = CASES[stage]
    peaks = _layer_peaks(model, inputs(model, processor), stop_after if size == "real" else None)
    assert len(peaks) >= 2, f"too few transformer layers seen in the {size} {stage}: {sorted(peaks)}"
    low = {name: p for name, (p, _) in peaks.items() if p < 1e-2}
    assert not low, f"{size} {stage}: layers whose largest |activation| is below 1e-2: {low}"
    denormal = {name: d for name, (_, d) in peaks.items() if d > 1e-4}
    assert not denormal, f"{size} {stage}: layers with denormal outputs (fraction of non-zeros): {denormal}"


def test_random_models_are_reproducible_and_sizes_checked():
    a, _ = random_model("features", "tiny", seed=3)
    b, _ = random_model("features", "tiny", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="size must be one of"):
        random_model("features", "huge")
    with pytest.raises(ValueError, match="unknown stage"):
        random_model("tracker", "tiny")
