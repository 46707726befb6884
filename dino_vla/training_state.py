"""Resumable training: the optimiser's state, torch's RNG and the step, in `training_state.safetensors` beside a
checkpoint (safetensors, no pickle). The policy's training and the perception fine-tuning both use it."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

TRAINING_STATE = "training_state.safetensors"


class TrainingStateError(ValueError):
    pass


def save_training_state(directory: Path, optimizer: torch.optim.Optimizer, step: int) -> None:
    tensors, scalars = {"rng.torch": torch.get_rng_state()}, {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: v for k, v in g.items()} for g in optimizer.state_dict()["param_groups"]]
    tmp = directory / (TRAINING_STATE + ".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step), "param_groups": json.dumps(groups),
                                           "scalars": json.dumps(scalars)})
    tmp.replace(directory / TRAINING_STATE)


def load_training_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> int:
    """Restore the optimiser and torch's RNG from a checkpoint; returns the step to continue from."""
    path = Path(directory) / TRAINING_STATE
    if not path.is_file():
        raise TrainingStateError(f"{directory} has no {TRAINING_STATE} to resume from")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in json.loads(meta["scalars"]).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"])


def write_training_record(directory: Path, name: str, settings: dict, step: int, history: list[dict],
                          model_source: str) -> None:
    """`name` (JSON) beside a checkpoint: its settings, step and history, and the weights the run started from
    (kept from the first write, since a resumed run starts from the checkpoint itself)."""
    path = Path(directory) / name
    started_from = json.loads(path.read_text()).get("started_from", model_source) if path.is_file() else model_source
    path.write_text(json.dumps({"settings": settings, "step": step, "started_from": started_from,
                                "history": history}, indent=2) + "\n")
