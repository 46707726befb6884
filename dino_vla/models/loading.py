"""Shared model loading: source resolution (hub id or local directory), device and dtype, and one
clear error when weights cannot be had."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Iterable

import torch


class ModelUnavailableError(RuntimeError):
    """A model's weights cannot be found locally, in the HF cache, or on the hub."""


# from_pretrained is not thread-safe: it builds the model on the meta device with torch's initialisers patched
# process-wide, so a second load in another thread (model nodes sharing a process on a multi-threaded executor
# configure at once) fails with "Cannot copy out of meta tensor". One load at a time per process.
_LOADING = threading.Lock()

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use device 'auto' or 'cpu'")
    return dev


# The model nodes of the pick graph (features, detector, segmenter, policy) that may share one CPU.
MODEL_NODES_PER_CPU = 4


def set_torch_threads(requested: int) -> int:
    """Sets and returns this process's torch CPU threads: ``requested``, or for 0 the cores this process may use
    divided among the graph's model nodes (at least 1). torch's own default, every core in every node, made
    three perception nodes on 2 cores 15 times slower than one thread each (spinning threads fight over the
    cores), measured with `bench --graph`."""
    threads = requested or max(1, len(os.sched_getaffinity(0)) // MODEL_NODES_PER_CPU)
    torch.set_num_threads(threads)
    return threads


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # half precision only pays off on a GPU; CPUs without bf16/fp16 units get much slower
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def is_local_source(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith(("/", "./", "../", "~"))


def cached_on_this_machine(source: str) -> bool:
    """True when the weights load without network: a local directory or a complete HF cache entry."""
    if is_local_source(source):
        return (Path(source).expanduser() / "config.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(source, "config.json"), str)
    except Exception:  # malformed repo ids are "not cached", the loader reports them properly
        return False


def how_to_supply(sources: str | list[str], parameter: str) -> str:
    """How to provide weights: one `hf download` per hub id; a local path can only be (re)written."""
    hub_ids = [s for s in ([sources] if isinstance(sources, str) else sources) if not is_local_source(s)]
    ways = []
    if hub_ids:
        ways.append(" and ".join(f"`hf download {i}`" for i in hub_ids) + " on a machine with internet, "
                    "then copy its HF cache (~/.cache/huggingface, or $HF_HOME) here")
    ways.append(f"set `{parameter}` to a local directory written with save_pretrained (safetensors)")
    if hub_ids:
        ways.append("let this machine reach the Hugging Face hub")
    return "to supply it: " + "; or ".join(ways)


def load_pretrained(loader: Callable, source: str, *, what: str, parameter: str, **kwargs):
    """Call ``loader(source, ...)`` (a ``from_pretrained``), turning every way it can fail for lack of
    weights into one ModelUnavailableError that names what is missing and how to provide it."""
    local = is_local_source(source)
    if local:
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ModelUnavailableError(f"{what}: local model directory {str(path)!r} does not exist; "
                                        + how_to_supply(source, parameter))
        source = str(path)
        kwargs["local_files_only"] = True
    elif cached_on_this_machine(source):
        kwargs["local_files_only"] = True  # no network round trip (and no hang) when the cache has it
    try:
        with _LOADING:
            return loader(source, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "local directory" if local else "HF cache" + ("" if os.environ.get("HF_HUB_OFFLINE") == "1"
                                                             else " or hub")
        raise ModelUnavailableError(f"{what}: cannot load {source!r} from the {where} ({reason[:200]}); "
                                    + how_to_supply(source, parameter)) from None


def load_model(model_cls, source: str, device: torch.device, dtype: torch.dtype, *, what: str,
               parameter: str, compile: bool = False):
    """Weights are read from safetensors only and never with remote code. Attention through torch's
    scaled_dot_product_attention (fused kernels on GPUs) where transformers has it for the model class (DINOv2,
    SAM; Grounding DINO has none). `compile`: torch.compile the model in place (its first calls, and every new
    input shape, then pay for compilation)."""
    sdpa = {"attn_implementation": "sdpa"} if getattr(model_cls, "_supports_sdpa", False) else {}
    model = load_pretrained(model_cls.from_pretrained, source, what=what, parameter=parameter,
                            use_safetensors=True, trust_remote_code=False, dtype=dtype, **sdpa)
    model = model.to(device).eval()
    if compile:
        model.compile()
    return model


def to_model(tensor: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """A CPU input on `model`'s device, floating-point values in its dtype. To a GPU through pinned (page-locked)
    memory and a non-blocking copy, queued on the stream the model's kernels then run on: the CPU does not wait
    for the transfer."""
    dtype = model.dtype if tensor.is_floating_point() else tensor.dtype
    if model.device.type == "cuda":
        return tensor.pin_memory().to(model.device, dtype, non_blocking=True)
    return tensor.to(model.device, dtype)


def place(models: Iterable[torch.nn.Module], device: str | torch.device) -> int:
    """Move loaded models to `device` (a managed node parks them on the CPU while inactive); returns the bytes
    of GPU memory this process gave back. Leaving CUDA also hands the blocks torch's caching allocator kept
    for them back to the driver: without that the memory stays reserved by this process, and another
    process cannot have it."""
    device = torch.device(device)
    left = {p.device for model in models for p in model.parameters() if p.device.type == "cuda"} \
        if device.type != "cuda" else set()
    before = sum(torch.cuda.memory_reserved(d) for d in left)
    for model in models:
        model.to(device)
    if not left:
        return 0
    torch.cuda.empty_cache()
    return before - sum(torch.cuda.memory_reserved(d) for d in left)


def weights_obtainable(source: str, timeout_s: float = 10.0) -> bool:
    """Whether ``source`` can be loaded: on this machine already, or on a hub that answers."""
    if cached_on_this_machine(source):
        return True
    if is_local_source(source) or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(source, timeout=timeout_s)
        return True
    except Exception:  # unreachable hub, unknown id, gated repo: all mean "not loadable from here"
        return False


def load_model_and_processor(model_cls, processor_cls, source: str, device: str, dtype: str, *, what: str,
                             parameter: str, compile: bool = False):
    """The model on its device and dtype (load_model), and the processor saved beside it."""
    dev = resolve_device(device)
    model = load_model(model_cls, source, dev, resolve_dtype(dtype, dev), what=what, parameter=parameter,
                       compile=compile)
    processor = load_pretrained(processor_cls.from_pretrained, source, what=f"{what} processor",
                                parameter=parameter)
    return model, processor
