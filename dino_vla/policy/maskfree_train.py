"""`dino-vla train --policy mask-free`: fit the mask-free policy to a demonstration dataset.

The policy's inputs are what a camera gives: each frame's RGB (its DINOv2 patch grid and each patch's mean
colour) and depth (each patch's 3D point) and the camera pose. The target of an episode is the patch its
reference grasp projects into (or "none" when the named object is absent) and the grasp relative to that
patch (patches.grasp_offsets). The recorded instance masks serve only as a training aid: which patches show
the named object (half the heatmap target is spread over them, and a dense per-patch loss); never an input. The
backbone is frozen: every frame's patch tokens and camera channels are computed once and cached next to the
dataset, so an epoch costs only the policy network.
Batches are whole frames with all their instructions, so the words-free vision layers run once per frame.
Seeded and resumable like the object-token policy's training (training_state)."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dino_vla.dataset.format import ABSENT, Dataset, DatasetError
from dino_vla.models.features import DinoFeatures
from dino_vla.models.text import DEFAULT_MODEL as TEXT_ENCODER
from dino_vla.models.text import TextEncoder
from dino_vla.policy.checkpoint import load_checkpoint, save_checkpoint
from dino_vla.policy.maskfree_model import (MASK_FREE_TOKENS_VERSION, MaskFreeBatch, MaskFreeConfig,
                                            MaskFreePolicyNet)
from dino_vla.policy.patches import OFFSET_DIM, PatchGrid, camera_channels, grasp_offsets
from dino_vla.policy.tokens import language_text, request_vector
from dino_vla.policy.train import (TrainSettings, crop_fraction, optimise, parsed_tasks, split_by_frame,
                                   training_inputs)
from dino_vla.training_state import load_training_state

NONE = 0     # PatchTable.episode_target of "none of these": patch k is target k + 1
YAW = slice(5, 7)   # cos 2yaw, sin 2yaw among the offsets (patches.OFFSET_DIM)


@dataclass
class PatchTable:
    """Every frame's patch inputs and every episode's target, as flat tensors (cheap to cache)."""

    patches: torch.Tensor           # (F, P, Dv) DINOv2 patch tokens
    camera: torch.Tensor            # (F, P, CAMERA_DIM)
    language: torch.Tensor          # (sum T_t, Dl)
    language_offsets: torch.Tensor  # (tasks + 1,)
    request: torch.Tensor           # (tasks, REQUEST_DIM)
    episode_frame: torch.Tensor     # (E,)
    episode_task: torch.Tensor      # (E,)
    episode_target: torch.Tensor    # (E,) NONE, or 1 + the patch the grasp projects into
    episode_offsets: torch.Tensor   # (E, OFFSET_DIM) zeros where NONE
    episode_symmetry: torch.Tensor  # (E,) the target's turn symmetry (2, 4; 0 = round)
    episode_object: torch.Tensor    # (E, P) float16 fraction of each patch the target's mask covers (0: absent)

    def __len__(self) -> int:
        return len(self.episode_frame)

    def batch(self, episodes: torch.Tensor
              ) -> tuple[MaskFreeBatch, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, heatmap targets, offsets, symmetries, object coverage) of the given episodes; each frame
        passes once."""
        frames, index = torch.unique(self.episode_frame[episodes], return_inverse=True)
        tasks = self.episode_task[episodes]
        spans = [(int(self.language_offsets[t]), int(self.language_offsets[t + 1])) for t in tasks]
        longest = max(b - a for a, b in spans)
        language = torch.zeros(len(spans), longest, self.language.shape[1])
        pad = torch.ones(len(spans), longest, dtype=torch.bool)
        for i, (a, b) in enumerate(spans):
            language[i, :b - a], pad[i, :b - a] = self.language[a:b], False
        batch = MaskFreeBatch(self.patches[frames].float(), self.camera[frames], index, language, pad,
                              self.request[tasks])
        return (batch, self.episode_target[episodes], self.episode_offsets[episodes],
                self.episode_symmetry[episodes], self.episode_object[episodes].float())


def build_patch_table(dataset: Dataset, features: DinoFeatures, text: TextEncoder, crop: float,
                      table_height_m: float, progress: bool = True) -> tuple[PatchTable, dict]:
    """Patch tokens of every frame, targets of every episode; episodes whose grasp point is outside the view
    or without depth under it are dropped (counted)."""
    patches, camera, grids, depths, covers = [], [], {}, {}, {}
    for index, frame in tqdm(dataset.frames(), total=dataset.num_frames, desc="patch tokens", unit="frame",
                             file=sys.stderr, disable=not progress):
        feats = features.extract(frame.rgb)
        grid = PatchGrid.of(frame.rgb.shape[:2], feats.input_size, feats.patch_size, crop)
        depth = frame.depth_frame()
        patches.append(feats.patch_tokens.reshape(grid.size, -1).astype(np.float16))
        camera.append(camera_channels(frame.rgb, depth, frame.camera_to_base, grid, table_height_m))
        grids[index], depths[index] = grid, (depth, frame.camera_to_base)
        covers[index] = [grid.window(frame.mask(k).astype(np.float32)).reshape(-1).astype(np.float16)
                         for k in range(len(frame.objects))]
    understood = parsed_tasks(dataset)
    task_row = {task: i for i, task in enumerate(sorted(understood))}
    language = [text.encode(language_text(understood[task])).tokens for task in sorted(understood)]
    kept, dropped, refused = [], 0, 0
    for e in dataset.episodes:
        if e.task_index not in task_row:
            refused += 1
            continue
        symmetry = int(e.extra.get("symmetry", 2))
        if e.target_object == ABSENT:
            kept.append((e.frame_index, task_row[e.task_index], NONE, np.zeros(OFFSET_DIM, np.float32), symmetry,
                         np.zeros(grids[e.frame_index].size, np.float16)))
            continue
        depth, pose = depths[e.frame_index]
        target = grasp_offsets(grids[e.frame_index], np.asarray(e.grasp_position), e.grasp_yaw, e.grasp_width,
                               depth, pose)
        if target is None:
            dropped += 1
            continue
        cover = covers[e.frame_index][e.target_object] if e.target_object is not None else \
            np.zeros(grids[e.frame_index].size, np.float16)
        kept.append((e.frame_index, task_row[e.task_index], target[0] + 1, target[1], symmetry, cover))
    if not kept:
        raise DatasetError(f"{dataset.root}: no episode has a grasp point in view")
    first = next(iter(grids.values()))
    table = PatchTable(
        torch.as_tensor(np.stack(patches)), torch.as_tensor(np.stack(camera)),
        torch.as_tensor(np.concatenate(language)), torch.as_tensor(np.cumsum([0] + [len(t) for t in language])),
        torch.as_tensor(np.stack([request_vector(understood[t]) for t in sorted(understood)])),
        *(torch.as_tensor(np.asarray([k[i] for k in kept])) for i in range(3)),
        torch.as_tensor(np.stack([k[3] for k in kept])), torch.as_tensor(np.asarray([k[4] for k in kept])),
        torch.as_tensor(np.stack([k[5] for k in kept])))
    return table, {"episodes": len(dataset), "used": len(kept), "dropped_grasp_out_of_view": dropped,
                   "dropped_refused_instruction": refused, "absent": sum(1 for k in kept if k[2] == NONE),
                   "grid": [first.rows, first.cols], "patch_camera_px": round(first.patch_camera_px, 2)}


def cached_patch_table(dataset: Dataset, backbone: str, text: TextEncoder, features: DinoFeatures, crop: float,
                       table_height_m: float) -> tuple[PatchTable, dict]:
    source = str(Path(backbone).resolve()) if Path(backbone).exists() else backbone
    key = hashlib.sha256(json.dumps(["mask-free", "object-coverage", source, text.name, crop, table_height_m,
                                     len(dataset), dataset.num_frames, MASK_FREE_TOKENS_VERSION]).encode()
                         ).hexdigest()[:16]
    path = dataset.root / "cache" / f"patches-{key}.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            stats = json.loads(f.metadata()["stats"])
        return PatchTable(**load_file(str(path))), stats
    table, stats = build_patch_table(dataset, features, text, crop, table_height_m)
    path.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in asdict(table).items()}, str(path), metadata={"stats": json.dumps(stats)})
    return table, stats


def offset_loss(predicted: torch.Tensor, target: torch.Tensor, symmetry: torch.Tensor) -> torch.Tensor:
    """Per-episode smooth L1 over the normalised offsets; the yaw counts modulo the object's symmetry (a
    quarter turn of a square box is the same grasp: cos/sin 2yaw negated; round objects: any yaw)."""
    error = torch.nn.functional.smooth_l1_loss(predicted, target, beta=0.5, reduction="none")
    position = torch.cat([error[:, :YAW.start], error[:, YAW.stop:]], 1).sum(1)
    yaw = error[:, YAW].sum(1)
    return position, yaw, (symmetry != 0).float()


GRASP_SHARE = 0.5          # of the heatmap target on the grasp's patch; the rest spread over the named object
OBJECT_POS_WEIGHT = 10.0   # an object covers a few of the 256 patches: its patches weigh this much more


def heatmap_target(targets: torch.Tensor, on_object: torch.Tensor) -> torch.Tensor:
    """(B, 1 + P) target distribution: GRASP_SHARE on the grasp's patch and the rest spread evenly over the
    patches that show the named object, so every patch of it says "this one" while the grasp's stays the
    most likely (all on the grasp's patch where no patch is half covered; all on "none" where it is absent)."""
    out = torch.zeros(len(targets), 1 + on_object.shape[1])
    out[torch.arange(len(targets)), targets] = 1.0
    counts = on_object.sum(1, keepdim=True)
    spread = (targets != NONE).unsqueeze(1) & (counts > 0)
    out[:, 1:] += torch.where(spread, (1 - GRASP_SHARE) * on_object / counts.clamp_min(1), 0.0)
    out[torch.arange(len(targets)), targets] -= torch.where(spread[:, 0], 1 - GRASP_SHARE, 0.0)
    return out


def losses(net: MaskFreePolicyNet, table: PatchTable, episodes: torch.Tensor) -> tuple[torch.Tensor, dict]:
    batch, targets, offsets, symmetry, cover = table.batch(episodes)
    logits, predicted, named = net(batch)
    # the patches at least half covered by the named object's mask (none where it is absent)
    on_object = (cover >= 0.5).float()
    heatmap = -(heatmap_target(targets, on_object) * torch.log_softmax(logits, 1)).sum(1).mean()
    shown = torch.nn.functional.binary_cross_entropy_with_logits(named, on_object,
                                                                 pos_weight=logits.new_tensor(OBJECT_POS_WEIGHT))
    present = targets != NONE
    chosen = predicted[torch.arange(len(targets)), (targets - 1).clamp_min(0)][present]
    wanted = net.normalise_offsets(offsets[present])
    symmetry = symmetry[present]
    if len(wanted):
        position, yaw, counts = offset_loss(chosen, wanted, symmetry)
        turned = wanted.clone()
        turned[:, YAW] = net.normalise_offsets(-offsets[present])[:, YAW]
        _, yaw_turned, _ = offset_loss(chosen, turned, symmetry)
        yaw = torch.where(symmetry == 4, torch.minimum(yaw, yaw_turned), yaw) * counts
        regression = (position + yaw).mean() / OFFSET_DIM
    else:
        regression = logits.new_zeros(())
    with torch.no_grad():
        picked = logits.argmax(1)
        grasp = net.denormalise_offsets(chosen)
        truth = offsets[present]
        rows, cols = net.config.rows, net.config.cols
        near = ((picked - 1) // cols - (targets - 1) // cols).abs().le(1) & \
            ((picked - 1) % cols - (targets - 1) % cols).abs().le(1) & (picked != NONE)
        metrics = {"patch_accuracy": float((picked[present] == targets[present]).float().mean())
                   if present.any() else None,
                   "near_patch_accuracy": float(near[present].float().mean()) if present.any() else None,
                   "none_accuracy": float((picked[~present] == NONE).float().mean()) if (~present).any() else None,
                   "false_none_rate": float((picked[present] == NONE).float().mean()) if present.any() else None,
                   "pixel_error_patches": float((grasp[:, :2] - truth[:, :2]).norm(dim=1).mean()) if len(truth)
                   else None,
                   "residual_error_cm": float((grasp[:, 2:5] - truth[:, 2:5]).norm(dim=1).mean() * 100)
                   if len(truth) else None,
                   "width_error_cm": float((grasp[:, 7] - truth[:, 7]).abs().mean() * 100) if len(truth) else None}
        del rows
    return heatmap + regression + shown, {"heatmap_loss": heatmap.item(), "regression_loss": regression.item(),
                                          "object_loss": shown.item(), **metrics}


def frame_batches(table: PatchTable, episodes: torch.Tensor, frames_per_batch: int, generator=None
                  ) -> list[torch.Tensor]:
    """The episodes grouped by frame, frames_per_batch frames a batch (shuffled with `generator`)."""
    frames = torch.unique(table.episode_frame[episodes])
    if generator is not None:
        frames = frames[torch.randperm(len(frames), generator=generator)]
    by_frame: dict[int, list[int]] = {}
    for e, f in zip(episodes.tolist(), table.episode_frame[episodes].tolist()):
        by_frame.setdefault(f, []).append(e)
    return [torch.as_tensor([e for f in frames[i:i + frames_per_batch].tolist() for e in by_frame[f]])
            for i in range(0, len(frames), frames_per_batch)]


@torch.no_grad()
def evaluate_patch_table(net: MaskFreePolicyNet, table: PatchTable, episodes: torch.Tensor,
                         frames_per_batch: int = 64) -> dict:
    net.eval()
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for chunk in frame_batches(table, episodes, frames_per_batch):
        _, metrics = losses(net, table, chunk)
        present = int((table.episode_target[chunk] != NONE).sum())
        weights = {"none_accuracy": len(chunk) - present}
        for k, v in metrics.items():
            if v is not None:
                n = weights.get(k, len(chunk) if k.endswith("_loss") else present)
                totals[k] = totals.get(k, 0.0) + v * n
                counts[k] = counts.get(k, 0) + n
    net.train()
    return {k: round(v / max(counts[k], 1), 4) for k, v in totals.items()}


@torch.no_grad()
def refusal_margins(net: MaskFreePolicyNet, table: PatchTable, episodes: torch.Tensor,
                    frames_per_batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per episode: the "none" logit minus the best patch logit (the policy refuses where it is > 0), and
    whether the named object is absent."""
    net.eval()
    margins, absent = [], []
    for chunk in frame_batches(table, episodes, frames_per_batch):
        batch, targets, *_ = table.batch(chunk)
        logits = net(batch)[0]
        margins.append((logits[:, 0] - logits[:, 1:].max(1).values).numpy())
        absent.append((targets == NONE).numpy())
    net.train()
    return np.concatenate(margins), np.concatenate(absent)


def best_refusal_shift(margins: np.ndarray, absent: np.ndarray) -> tuple[float, int, int]:
    """(shift, wrong decisions before, after): the shift of the "none" logit that makes the fewest wrong
    refuse/grasp decisions (refusing a present object, grasping at an absent one); the smallest such shift."""
    def wrong(shift: float) -> int:
        refuse = margins + shift > 0
        return int(np.count_nonzero(refuse & ~absent) + np.count_nonzero(~refuse & absent))

    edges = np.unique(margins)
    # refusal flips where margin + shift crosses 0: try just past every margin, and no shift
    candidates = np.concatenate([[0.0], -(edges[:-1] + edges[1:]) / 2, [-edges[0] + 1e-3, -edges[-1] - 1e-3]])
    errors = np.array([wrong(c) for c in candidates])
    best = candidates[errors == errors.min()]
    shift = float(best[np.argmin(np.abs(best))])
    return shift, wrong(0.0), wrong(shift)


def calibrate_refusal(net: MaskFreePolicyNet, table: PatchTable, episodes: torch.Tensor) -> dict:
    """Moves the learned "none" prior (none_bias) to the shift best_refusal_shift finds on `episodes` (held-out
    scenes): the trained network refused a quarter of present objects while its patch ranking was right."""
    margins, absent = refusal_margins(net, table, episodes)
    if absent.all() or not absent.any():
        # with one kind only, the fewest wrong decisions would refuse always or never: nothing to weigh
        kind = "absent" if absent.any() else "present"
        return {"shift": 0.0, "episodes": len(margins), "absent": int(absent.sum()),
                "skipped": f"every validation request names a {kind} object: the refusal stays as trained"}
    shift, before, after = best_refusal_shift(margins, absent)
    with torch.no_grad():
        net.none_bias += shift
    return {"shift": round(shift, 4), "episodes": len(margins), "absent": int(absent.sum()),
            "wrong_decisions_before": before, "wrong_decisions_after": after}


@dataclass(frozen=True)
class MaskFreeSettings:
    d_model: int = 64
    vision_layers: int = 2
    fusion_layers: int = 2
    frames_per_batch: int = 12

    def __post_init__(self):
        for name, least in (("d_model", 4), ("vision_layers", 0), ("fusion_layers", 1), ("frames_per_batch", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{name.replace('_', '-')} must be >= {least}, got {getattr(self, name)}")


def train_mask_free(dataset_dir: str, out: str, backbone: str, settings: TrainSettings = TrainSettings(),
                    network: MaskFreeSettings = MaskFreeSettings(), resume: bool = False,
                    text_model: str = TEXT_ENCODER, threads: int = 0, stop_after_epoch: int | None = None) -> dict:
    """Train (or resume) a mask-free policy on `dataset_dir`, writing checkpoints to `out` after every epoch
    (settings.batch_size is unused: a batch is network.frames_per_batch frames with all their episodes)."""
    started = time.perf_counter()
    dataset, info, features, text = training_inputs(dataset_dir, out, backbone, text_model, resume, threads)
    if resume:
        backbone, text_model, config = info.backbone, info.text_encoder, info.config
        settings = TrainSettings(**info.training["settings"])
        network = MaskFreeSettings(**info.training["network"])
    crop = crop_fraction(features)
    table_height = config.table_height_m if resume else 0.40
    table, stats = cached_patch_table(dataset, backbone, text, features, crop, table_height)
    if not resume:
        rows, cols = stats["grid"]
        config = MaskFreeConfig(vision_dim=int(features.model.config.hidden_size), language_dim=text.dim,
                                rows=rows, cols=cols, patch_px=features.patch_size, crop_fraction=crop,
                                table_height_m=table_height, d_model=network.d_model,
                                vision_layers=network.vision_layers, fusion_layers=network.fusion_layers)
    train_eps, val_eps = split_by_frame(table, settings.validation_fraction, settings.seed)
    torch.manual_seed(settings.seed)
    net = MaskFreePolicyNet(config)
    step = 0
    if resume:
        net, _ = load_checkpoint(out)
        net.train()
    else:
        present = train_eps[table.episode_target[train_eps] != NONE]
        net.fit_statistics(table.camera.reshape(-1, table.camera.shape[-1]).numpy(),
                           table.episode_offsets[present].numpy())
    optimizer = torch.optim.AdamW([{"params": list(net.parameters()), "lr": settings.learning_rate,
                                    "initial_lr": settings.learning_rate}], weight_decay=settings.weight_decay)
    if resume:
        step = load_training_state(out, optimizer)
    steps_per_epoch = len(frame_batches(table, train_eps, network.frames_per_batch))
    total_steps = settings.epochs * steps_per_epoch
    training = {"dataset": str(Path(dataset_dir).resolve()), "dataset_source": dataset.info.get("source"),
                "settings": asdict(settings), "network": asdict(network), "tokens": stats,
                "train_episodes": len(train_eps), "validation_episodes": len(val_eps),
                "history": info.training.get("history", []) if resume else []}
    if resume and "refusal_calibration" in info.training:
        training["refusal_calibration"] = info.training["refusal_calibration"]
    net.train()
    bar = tqdm(total=total_steps, initial=step, desc="training mask-free", unit="step", file=sys.stderr)
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        shuffle = torch.Generator().manual_seed(settings.seed * 100003 + epoch)
        batches = frame_batches(table, train_eps, network.frames_per_batch, shuffle)
        for episodes in batches[offset:]:
            loss, metrics = losses(net, table, episodes)
            optimise(net, optimizer, loss, step, total_steps)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{metrics['patch_accuracy'] or 0:.2f}")
        validation = evaluate_patch_table(net, table, val_eps) if len(val_eps) else {}
        training["history"].append({"epoch": epoch + 1, "step": step, "loss": round(loss.item(), 4), **validation})
        training["elapsed_s"] = round(time.perf_counter() - started, 1)
        save_checkpoint(out, net, backbone, text_model, training, optimizer, step)
        bar.write(f"epoch {epoch + 1}/{settings.epochs}: loss {loss.item():.4f}, validation {validation}")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    bar.close()
    if step >= total_steps and len(val_eps) and "refusal_calibration" not in training:
        # once, when the last epoch is done: a run resumed before that continues the same weights step for step
        training["refusal_calibration"] = calibrate_refusal(net, table, val_eps)
        training["history"].append({"epoch": "calibrated", "step": step,
                                    **evaluate_patch_table(net, table, val_eps)})
        save_checkpoint(out, net, backbone, text_model, training, optimizer, step)
        calibration = training["refusal_calibration"]
        print(f"WARNING: refusal not calibrated: {calibration['skipped']}" if "skipped" in calibration
              else f"refusal calibrated on the validation scenes: {calibration}", file=sys.stderr)
    training["elapsed_s"] = round(time.perf_counter() - started, 1)
    return training
