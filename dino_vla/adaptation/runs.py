"""What the perception trainings share: the frames they learn from, the seeded frame split, the run directory
(refusing to overwrite a run, resuming one with its own settings), its checkpoints, and the processes of a
torchrun launch."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dino_vla.models.loading import resolve_device
from dino_vla.training_state import TrainingStateError, save_training_state, write_training_record

MIN_MASK_PX = 50     # smaller instances (mostly hidden behind others) are neither trained on nor scored


def category_of(name: str) -> str:
    """An instance's kind: its name without the suffix that tells instances of one kind apart (cup_2 is a cup)."""
    return re.sub(r"_\d+$", "", name)


def instances_of(frame) -> list[tuple[int, str, np.ndarray]]:
    """(label, name, mask) of a recorded frame's instances of at least MIN_MASK_PX pixels."""
    out = []
    for k, name in enumerate(frame.objects, start=1):
        mask = frame.labels == k
        if mask.sum() >= MIN_MASK_PX:
            out.append((k, name, mask))
    return out


def split_frames(num_frames: int, validation_fraction: float, seed: int, max_frames: int = 0
                 ) -> tuple[list[int], list[int]]:
    """(training, validation) frame indices: a seeded permutation, the first validation_fraction held out."""
    order = np.random.default_rng(seed).permutation(num_frames)
    if max_frames:
        order = order[:max_frames]
    held = max(1, int(round(validation_fraction * len(order)))) if len(order) > 1 else 0
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())


def open_run(out: Path, training_file: str, what: str, settings, resume: bool):
    """(settings, record): a new run refuses an `out` that holds one; a resumed run takes its recorded settings,
    only the budget (steps, minutes) from `settings`, and its record (history, started_from)."""
    if resume and not (out / training_file).is_file():
        raise TrainingStateError(f"{out} has no {training_file} to resume from")
    if not resume and (out / training_file).is_file():
        raise TrainingStateError(f"{out} already holds a fine-tuned {what}; --resume continues it, or choose "
                                 f"another --out")
    if not resume:
        return settings, None
    record = json.loads((out / training_file).read_text())
    recorded = type(settings)(**record["settings"])
    return replace(recorded, steps=settings.steps, minutes=settings.minutes), record


def save_run(out: Path, training_file: str, model, processor, optimizer, step: int, settings, history: list[dict],
             model_source: str) -> None:
    """The model as a transformers directory (safetensors + processor), the training state, and `training_file`
    (settings, step, the model the run started from, validation history)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    save_training_state(out, optimizer, step)
    write_training_record(out, training_file, asdict(settings), step, history, model_source)


@dataclass(frozen=True)
class Processes:
    """This process's place in a torchrun launch (rank 0 of 1 without one) and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str) -> "Processes":
        """torchrun sets WORLD_SIZE, RANK, LOCAL_RANK and the rendezvous: one process per GPU (nccl) or, on CPUs,
        gloo."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = resolve_device(device)
        if world == 1:
            return cls(0, 1, dev)
        import torch.distributed as dist

        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), dev)

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (a wall-time budget must stop all ranks at the same step)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(value, 0)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def stop(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
