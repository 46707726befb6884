"""Policy checkpoints: a directory holding

    policy.safetensors          weights + normalisation statistics; metadata: policy (the kind: object-tokens,
                                or mask-free; absent in checkpoints older than the kinds: object-tokens),
                                config (JSON), backbone, text_encoder, training (JSON: dataset, seed, steps,
                                losses)
    training_state.safetensors  optimiser moments, RNG state and step, to resume training (optional)
    backbone/                   the DINOv2 weights the policy was trained on, when they came from a local
                                directory (random weights, a backbone pretrained here) that no hub id or cache
                                could reproduce (save_pretrained layout, safetensors)

safetensors only: nothing here unpickles."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dino_vla.config import SHIPPED_CHECKPOINT
from dino_vla.models.random_init import is_random_model
from dino_vla.models.text import DEFAULT_MODEL as TEXT_ENCODER
from dino_vla.policy.maskfree_model import MASK_FREE, MASK_FREE_TOKENS_VERSION, MaskFreeConfig, MaskFreePolicyNet
from dino_vla.policy.model import GraspPolicyNet, PolicyConfig
from dino_vla.policy.tokens import TOKENS_VERSION
from dino_vla.training_state import save_training_state

WEIGHTS = "policy.safetensors"
BACKBONE_DIR = "backbone"
BACKBONE_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "dino_vla_random.json")
# The checkpoint that ships with the package: trained by `dino-vla train` on simulator demonstrations over
# the tiny random-weight DINOv2 stored inside it (see its README).
SHIPPED_DIR = Path(__file__).parent / "checkpoints" / "sim-tiny"
# the mask-free policy that ships beside it (`dino-vla train --policy mask-free`, same demonstrations)
SHIPPED_MASK_FREE = "shipped-mask-free"
SHIPPED_MASK_FREE_DIR = Path(__file__).parent / "checkpoints" / "mask-free-tiny"


OBJECT_TOKENS = "object-tokens"   # the kind of GraspPolicyNet: object tokens from masks + depth
KINDS = {OBJECT_TOKENS: (PolicyConfig, GraspPolicyNet), MASK_FREE: (MaskFreeConfig, MaskFreePolicyNet)}


class CheckpointError(ValueError):
    pass


def resolve_checkpoint(value: str | Path) -> str:
    """A checkpoint as given (policy node parameter, --checkpoint) as a directory: `shipped` is the package's,
    `shipped-mask-free` its mask-free one."""
    return {SHIPPED_CHECKPOINT: str(SHIPPED_DIR), SHIPPED_MASK_FREE: str(SHIPPED_MASK_FREE_DIR)}.get(str(value),
                                                                                                   str(value))


@dataclass(frozen=True)
class CheckpointInfo:
    config: PolicyConfig | MaskFreeConfig
    backbone: str              # hub id, or a directory (absolute, or resolved against the checkpoint)
    text_encoder: str
    training: dict
    kind: str = OBJECT_TOKENS     # which network: OBJECT_TOKENS or MASK_FREE


def save_checkpoint(directory: str | Path, net: GraspPolicyNet | MaskFreePolicyNet, backbone: str, text_encoder: str,
                    training: dict, optimizer: torch.optim.Optimizer | None = None, step: int = 0,
                    tuned_backbone=None) -> Path:
    """Write (or overwrite) a checkpoint; with `optimizer`, also the state to resume training from.
    tuned_backbone: the fine-tuned DINOv2 (a DinoFeatures), saved into backbone/ in place of `backbone`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tuned_backbone is not None:
        tuned_backbone.model.save_pretrained(directory / BACKBONE_DIR, safe_serialization=True)
        tuned_backbone.processor.save_pretrained(directory / BACKBONE_DIR)
        backbone = BACKBONE_DIR
    elif Path(backbone).is_dir() and Path(backbone).resolve() == (directory / BACKBONE_DIR).resolve():
        backbone = BACKBONE_DIR   # its own copy (a resumed run): relative, so the checkpoint can be moved
    elif Path(backbone).is_dir():
        # a local directory (random weights, or a backbone pretrained here) cannot be fetched by name: the
        # checkpoint carries the model's own files, not what its training left beside them
        shutil.rmtree(directory / BACKBONE_DIR, ignore_errors=True)
        shutil.copytree(backbone, directory / BACKBONE_DIR, ignore=lambda folder, names: [
            n for n in names if n not in BACKBONE_FILES])
        backbone = BACKBONE_DIR
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    kind = MASK_FREE if isinstance(net, MaskFreePolicyNet) else OBJECT_TOKENS
    save_file(state, str(tmp), metadata={"policy": kind, "config": net.config.to_json(), "backbone": backbone,
                                         "text_encoder": text_encoder, "training": json.dumps(training)})
    tmp.replace(directory / WEIGHTS)   # a crash mid-write leaves the previous checkpoint intact
    if optimizer is not None:
        save_training_state(directory, optimizer, step)
    return directory


def read_info(directory: str | Path) -> CheckpointInfo:
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a policy checkpoint (no {WEIGHTS})")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    kind = meta.get("policy", OBJECT_TOKENS)
    if kind not in KINDS:
        raise CheckpointError(f"{path}: policy kind {kind!r} is unknown to this package (it knows "
                              f"{', '.join(KINDS)})")
    try:
        config = KINDS[kind][0].from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable config ({err})") from None
    backbone = meta.get("backbone", "")
    if backbone == BACKBONE_DIR:
        backbone = str(Path(directory).resolve() / BACKBONE_DIR)
    return CheckpointInfo(config, backbone, meta.get("text_encoder", ""), json.loads(meta.get("training", "{}")),
                          kind)


def write_model_card(directory: str | Path, training: dict) -> None:
    """README.md of a checkpoint written by train(): what it was trained on, how, and what it reached."""
    directory = Path(directory)
    info = read_info(directory)
    backbone = info.backbone
    kind = ("RANDOM-WEIGHT tiny DINOv2 (stored in backbone/)" if is_random_model(backbone) else
            f"{backbone} (fine-tuned by this run)" if training["settings"].get("finetune_backbone") else backbone)
    last = training["history"][-1] if training["history"] else {}
    (directory / "README.md").write_text(
        "# dino_vla grasp policy checkpoint\n\n"
        f"- vision backbone: {kind}\n- text encoder: {info.text_encoder} (real pretrained weights)\n"
        f"- dataset: {training['dataset_source']} ({training['train_episodes']} training, "
        f"{training['validation_episodes']} validation episodes)\n"
        f"- settings: {json.dumps(training['settings'])}\n"
        f"- network: {info.config.to_json()}\n"
        f"- last epoch (validation, held-out scenes): {json.dumps(last)}\n"
        f"- training time: {training.get('elapsed_s')} s\n\n"
        "Made by `dino-vla train`; `dino-vla train --resume` continues the run while "
        "training_state.safetensors is beside it. Success rates are measured by `dino-vla eval`, not here.\n")


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[GraspPolicyNet | MaskFreePolicyNet, CheckpointInfo]:
    """The network of either kind (info.kind says which) and what the checkpoint says about it."""
    info = read_info(directory)
    if info.kind == MASK_FREE and info.config.tokens_version != MASK_FREE_TOKENS_VERSION:
        raise CheckpointError(f"{directory} is a mask-free policy of tokens version {info.config.tokens_version}; "
                              f"this package builds version {MASK_FREE_TOKENS_VERSION}: train it again "
                              "(dino-vla train --policy mask-free)")
    if info.kind == OBJECT_TOKENS and info.config.tokens_version != TOKENS_VERSION:
        raise CheckpointError(f"{directory} was trained on version {info.config.tokens_version} tokens; this "
                              f"package builds version {TOKENS_VERSION} (parsed request text and one-hots, colours, "
                              "a 'none' choice, each relation reference encoded alone for the reference "
                              "pointer): train it again (dino-vla record-sim, then dino-vla train)")
    net = KINDS[info.kind][1](info.config)
    state = load_file(str(Path(directory) / WEIGHTS))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{directory}: weights do not fit the config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    return net.to(device).eval(), info


def random_checkpoint(directory: str | Path, features_source: str, language_dim: int = 384,
                      seed: int = 0, refuses: bool = False, **config) -> str:
    """An untrained checkpoint (random weights, identity statistics) for tests of the plumbing around a
    policy: its decisions mean nothing. It always chooses some object, unless `refuses`: then always none."""
    from transformers import AutoConfig

    torch.manual_seed(seed)
    vision_dim = int(AutoConfig.from_pretrained(features_source).hidden_size)
    net = GraspPolicyNet(PolicyConfig(vision_dim=vision_dim, language_dim=language_dim, **config))
    with torch.no_grad():
        net.none_bias.fill_(1e4 if refuses else -1e4)
    save_checkpoint(directory, net, features_source, TEXT_ENCODER, {"untrained": True})
    return str(directory)
