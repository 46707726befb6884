"""`dino-vla train`: fit the grasp policy to a demonstration dataset.

The vision backbone is frozen: every frame's DINOv2 tokens and object tokens are computed once and cached
next to the dataset (keyed by backbone, text encoder and view settings), so an epoch costs only the policy
network. Training is seeded (data order, initialisation, dropout) and resumable: each checkpoint carries the
optimiser and RNG state, and --resume continues the same run step for step."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dino_vla.models.features import DinoFeatures
from dino_vla.models.text import DEFAULT_MODEL as TEXT_ENCODER
from dino_vla.models.text import TextEncoder
from dino_vla.policy.checkpoint import load_checkpoint, read_info, save_checkpoint
from dino_vla.training_state import load_training_state
from dino_vla.colour import colour_names
from dino_vla.dataset.format import ABSENT, Dataset, DatasetError
from dino_vla.dataset.references import reference_objects
from dino_vla.language import Instruction, InstructionError, parse
from dino_vla.policy.model import Batch, GraspPolicyNet, PolicyConfig, collate
from dino_vla.policy.tokens import (REFERENCE_SLOTS, TARGET_DIM, TOKENS_VERSION, ViewSettings, crop_feature,
                                   grasp_target, language_text, object_tokens, reference_vectors, request_vector,
                                   vision_tokens)


def crop_fraction(features: DinoFeatures) -> float:
    """The processor's centre crop as a fraction of its resize (1 when it does not crop)."""
    p = features.processor
    if not getattr(p, "do_center_crop", False):
        return 1.0
    return float(p.crop_size["height"]) / float(p.size["shortest_edge"])


NONE_ROW = -1   # TokenTable.episode_row of an episode whose right choice is "none of these"


@dataclass
class TokenTable:
    """Every episode's token inputs and grasp target, as flat tensors with offsets (cheap to cache)."""

    vision: torch.Tensor          # (F, V, Dv)
    geometry: torch.Tensor        # (sum N_f, GEOMETRY_DIM)
    pooled: torch.Tensor          # (sum N_f, Dv)
    coverage: torch.Tensor        # (sum N_f,)
    object_offsets: torch.Tensor  # (F + 1,)
    language: torch.Tensor        # (sum T_t, Dl)
    language_offsets: torch.Tensor  # (tasks + 1,)
    request: torch.Tensor         # (tasks, REQUEST_DIM)
    episode_frame: torch.Tensor   # (E,)
    episode_task: torch.Tensor    # (E,)
    episode_row: torch.Tensor     # (E,) the target's row among its frame's object tokens, or NONE_ROW
    episode_target: torch.Tensor  # (E, 5) dx, dy, dz, dyaw, opening
    reference: torch.Tensor       # (tasks, REFERENCE_SLOTS, Dl) tokens.reference_vectors, zero-padded
    reference_count: torch.Tensor  # (tasks,)
    episode_references: torch.Tensor  # (E, REFERENCE_SLOTS) each reference's row among the objects, or -1
    # kept only to fine-tune the backbone: its input images and each object token's patch weights
    pixels: torch.Tensor | None = None         # (F, 3, H, W) float16, preprocessed
    patch_weights: torch.Tensor | None = None  # (sum N_f, rows, cols)

    def __len__(self) -> int:
        return len(self.episode_frame)

    def objects(self, frame: int) -> slice:
        return slice(int(self.object_offsets[frame]), int(self.object_offsets[frame + 1]))

    def batch(self, episodes: torch.Tensor, backbone: DinoFeatures | None = None
              ) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        """(inputs, target rows, targets) of the given episode indices. With `backbone` (fine-tuning), the
        vision and pooled object tokens are recomputed through it, differentiably. The references' rows are
        self.episode_references[episodes]."""
        frames, tasks = self.episode_frame[episodes], self.episode_task[episodes]
        lang = [self.language[int(self.language_offsets[t]):int(self.language_offsets[t + 1])].numpy() for t in tasks]
        parts = [self.objects(int(f)) for f in frames]
        batch = collate(lang, [self.request[t].numpy() for t in tasks], [self.vision[f].numpy() for f in frames],
                        [self.geometry[s].numpy() for s in parts],
                        [self.pooled[s].numpy() for s in parts], [self.coverage[s].numpy() for s in parts],
                        [self.reference[t, :int(self.reference_count[t])].numpy() for t in tasks])
        if backbone is not None:
            batch.vision, batch.pooled = self._tuned_tokens(backbone, frames, parts, batch)
        return batch, self.episode_row[episodes], self.episode_target[episodes]

    def _tuned_tokens(self, backbone: DinoFeatures, frames: torch.Tensor, parts: list[slice], batch: Batch):
        pixels = self.pixels[frames].to(backbone.model.dtype)
        hidden = backbone.model(pixel_values=pixels).last_hidden_state
        rows, cols = self.patch_weights.shape[1:]
        patches = hidden[:, -rows * cols:].reshape(len(frames), rows, cols, -1)
        grid = int(round(batch.vision.shape[1] ** 0.5))
        # area averaging, as vision_tokens does with cv2 at run time
        vision = torch.nn.functional.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2), grid)
        vision = vision.flatten(2).transpose(1, 2)
        pooled = torch.zeros_like(batch.pooled)
        for i, part in enumerate(parts):
            weights = self.patch_weights[part]
            totals = weights.sum((1, 2))
            tokens = torch.einsum("nrc,rcd->nd", weights, patches[i]) / totals.clamp_min(1e-6).unsqueeze(1)
            pooled[i, :len(weights)] = torch.where((totals > 1e-6).unsqueeze(1), tokens, 0.0)
        return vision, pooled


def parsed_tasks(dataset: Dataset) -> dict[int, Instruction]:
    """Every task (instruction) of the dataset the parser understands, by task index; the others' episodes
    are dropped by the token builders (and counted)."""
    understood = {}
    for task, instruction in sorted({e.task_index: e.instruction for e in dataset.episodes}.items()):
        try:
            understood[task] = parse(instruction)
        except InstructionError:
            pass
    return understood


def build_tokens(dataset: Dataset, features: DinoFeatures, text: TextEncoder, view: ViewSettings,
                 progress: bool = True, for_finetuning: bool = False) -> tuple[TokenTable, dict]:
    """Tokens of every frame and episode; episodes whose target has no object token are dropped (counted).
    for_finetuning also keeps the preprocessed images and the objects' patch weights."""
    vision, geometry, pooled, coverage, offsets, rows_of = [], [], [], [], [0], {}
    pixels, weights = [], []
    anchors, names = {}, {}
    for index, frame in tqdm(dataset.frames(), total=dataset.num_frames, desc="tokens", unit="frame",
                             file=sys.stderr, disable=not progress):
        feats = features.extract(frame.rgb)
        masks = np.stack([frame.mask(k) for k in range(len(frame.objects))]) if frame.objects else \
            np.zeros((0, *frame.labels.shape), bool)
        # colours measured from the pixels, as the perception pipeline measures them on the robot
        objects = object_tokens(feats, frame.depth_frame(), masks, frame.camera_to_base, view,
                                colour_names(frame.rgb, masks), partial(crop_feature, features.extract, frame.rgb))
        vision.append(vision_tokens(feats, view.vision_grid))
        if for_finetuning:
            pixels.append(features.preprocess(frame.rgb)[0].half())
            weights.append(objects.patch_weights)
        geometry.append(objects.geometry)
        pooled.append(objects.pooled)
        coverage.append(objects.coverage)
        offsets.append(offsets[-1] + len(objects))
        rows_of[index] = {k: row for row, k in enumerate(objects.kept)}
        anchors[index] = objects.anchors
        names[index] = frame.objects
    understood = parsed_tasks(dataset)
    tasks = sorted(understood.items())
    language = [text.encode(language_text(understood[task])).tokens for task, _ in tasks]
    task_row = {task: i for i, (task, _) in enumerate(tasks)}
    phrase_tokens: dict[str, np.ndarray] = {}

    def encode(phrase: str) -> np.ndarray:
        if phrase not in phrase_tokens:
            phrase_tokens[phrase] = text.encode(phrase).tokens
        return phrase_tokens[phrase]

    reference = np.zeros((len(tasks), REFERENCE_SLOTS, text.dim), np.float32)
    reference_count = np.zeros(len(tasks), np.int64)
    for i, (task, _) in enumerate(tasks):
        vectors = reference_vectors(understood[task], encode)[:REFERENCE_SLOTS]
        if len(vectors):
            reference[i, :len(vectors)] = vectors
        reference_count[i] = len(vectors)

    def reference_rows(e) -> list[int]:
        """Each reference's row among the episode's frame's object tokens (-1: unknown or no token)."""
        relation = understood[e.task_index].relation
        nouns = [r.noun for r in relation.references][:REFERENCE_SLOTS] if relation is not None else []
        found = reference_objects(names.get(e.frame_index, ()), nouns)
        rows = [rows_of.get(e.frame_index, {}).get(k, -1) if k is not None else -1 for k in found]
        return rows + [-1] * (REFERENCE_SLOTS - len(rows))

    kept, dropped, refused = [], 0, 0
    for e in dataset.episodes:
        if e.task_index not in task_row:
            refused += 1
            continue
        if e.target_object == ABSENT:     # choice 0: none of these
            kept.append((e.frame_index, task_row[e.task_index], NONE_ROW, np.zeros(TARGET_DIM, np.float32),
                         reference_rows(e)))
            continue
        row = rows_of.get(e.frame_index, {}).get(e.target_object) if e.target_object is not None else None
        if row is None:
            dropped += 1
            continue
        target = grasp_target(np.asarray(e.grasp_position), e.grasp_yaw, e.grasp_width,
                              anchors[e.frame_index][row], e.extra.get("symmetry", 2))
        kept.append((e.frame_index, task_row[e.task_index], row, target, reference_rows(e)))
    if not kept:
        raise DatasetError(f"{dataset.root}: no episode has a target object with usable depth")
    table = TokenTable(
        torch.as_tensor(np.stack(vision)), torch.as_tensor(np.concatenate(geometry)),
        torch.as_tensor(np.concatenate(pooled)), torch.as_tensor(np.concatenate(coverage)),
        torch.as_tensor(offsets), torch.as_tensor(np.concatenate(language)),
        torch.as_tensor(np.cumsum([0] + [len(t) for t in language])),
        torch.as_tensor(np.stack([request_vector(understood[task]) for task, _ in tasks])),
        torch.as_tensor([k[0] for k in kept]), torch.as_tensor([k[1] for k in kept]),
        torch.as_tensor([k[2] for k in kept]), torch.as_tensor(np.stack([k[3] for k in kept])),
        torch.as_tensor(reference), torch.as_tensor(reference_count),
        torch.as_tensor(np.asarray([k[4] for k in kept], np.int64).reshape(-1, REFERENCE_SLOTS)),
        torch.stack(pixels) if for_finetuning else None,
        torch.as_tensor(np.concatenate(weights)) if for_finetuning else None)
    return table, {"episodes": len(dataset), "used": len(kept), "dropped_no_target_token": dropped,
                   "dropped_refused_instruction": refused,
                   "absent": sum(1 for k in kept if k[2] == NONE_ROW),
                   "references_grounded": sum(sum(r >= 0 for r in k[4]) for k in kept)}


def cached_tokens(dataset: Dataset, backbone: str, view: ViewSettings, text: TextEncoder,
                  features: DinoFeatures, for_finetuning: bool = False) -> tuple[TokenTable, dict]:
    key = hashlib.sha256(json.dumps([str(Path(backbone).resolve()) if Path(backbone).exists() else backbone,
                                     text.name, asdict(view), len(dataset), dataset.num_frames,
                                     for_finetuning, TOKENS_VERSION]).encode()
                         ).hexdigest()[:16]
    path = dataset.root / "cache" / f"tokens-{key}.safetensors"
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            stats = json.loads(f.metadata()["stats"])
        return TokenTable(**load_file(str(path))), stats
    table, stats = build_tokens(dataset, features, text, view, for_finetuning=for_finetuning)
    path.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in asdict(table).items() if v is not None}, str(path),
              metadata={"stats": json.dumps(stats)})
    return table, stats


def split_by_frame(table: TokenTable, validation_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode indices (train, validation), whole frames held out so validation scenes are unseen."""
    frames = torch.unique(table.episode_frame)
    order = frames[torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))]
    held = set(order[:int(round(validation_fraction * len(frames)))].tolist())
    is_val = torch.tensor([int(f) in held for f in table.episode_frame])
    return torch.nonzero(~is_val)[:, 0], torch.nonzero(is_val)[:, 0]


def losses(net: GraspPolicyNet, table: TokenTable, episodes: torch.Tensor, backbone: DinoFeatures | None = None
           ) -> tuple[torch.Tensor, dict]:
    batch, rows, targets = table.batch(episodes, backbone)
    logits, predicted, reference_logits = net(batch, with_references=True)
    choices = rows + 1                      # column 0 of the logits is "none of these"
    pointer = torch.nn.functional.cross_entropy(logits, choices)
    # the reference pointer: each reference phrase -> the one object it names, where the dataset knows it
    reference_rows = table.episode_references[episodes][:, :reference_logits.shape[1]]
    grounded = reference_rows >= 0
    reference = torch.nn.functional.cross_entropy(reference_logits[grounded], reference_rows[grounded]) \
        if grounded.any() else logits.new_zeros(())
    present = rows != NONE_ROW
    chosen = predicted[torch.arange(len(rows)), rows.clamp_min(0)][present]
    targets = targets[present]
    regression = torch.nn.functional.smooth_l1_loss(chosen, net.normalise_targets(targets), beta=0.5) \
        if len(targets) else logits.new_zeros(())
    with torch.no_grad():
        grasp = net.denormalise_targets(chosen)
        picked = logits.argmax(1)
        metrics = {"pointer_accuracy": float((picked == choices).float().mean()),
                   "reference_accuracy": float((reference_logits[grounded].argmax(-1) == reference_rows[grounded])
                                               .float().mean()) if grounded.any() else None,
                   "none_accuracy": float((picked[~present] == 0).float().mean()) if (~present).any() else None,
                   "position_error_cm": float((grasp[:, :3] - targets[:, :3]).norm(dim=1).mean() * 100),
                   "yaw_error_deg": float((grasp[:, 3] - targets[:, 3]).abs().mean().rad2deg()),
                   "width_error_cm": float((grasp[:, 4] - targets[:, 4]).abs().mean() * 100)}
    return pointer + regression + reference, {"pointer_loss": pointer.item(), "regression_loss": regression.item(),
                                              "reference_loss": reference.item(), **metrics}


@torch.no_grad()
def evaluate_table(net: GraspPolicyNet, table: TokenTable, episodes: torch.Tensor, batch_size: int = 256,
                   backbone: DinoFeatures | None = None) -> dict:
    net.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(episodes), batch_size):
        chunk = episodes[start:start + batch_size]
        _, metrics = losses(net, table, chunk, backbone)
        counts = {"none_accuracy": int((table.episode_row[chunk] == NONE_ROW).sum()),
                  "reference_accuracy": int((table.episode_references[chunk] >= 0).sum())}
        for k, v in metrics.items():
            if v is not None:     # none_accuracy (reference_accuracy) is a mean over absent episodes (references)
                totals[k] = totals.get(k, 0.0) + v * counts.get(k, len(chunk))
    net.train()
    counts = {"none_accuracy": int((table.episode_row[episodes] == NONE_ROW).sum()),
              "reference_accuracy": int((table.episode_references[episodes] >= 0).sum())}
    return {k: round(v / max(counts.get(k, len(episodes)), 1), 4) for k, v in totals.items()}


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    validation_fraction: float = 0.1
    finetune_backbone: bool = False    # False: DINOv2 frozen, its tokens cached once
    backbone_learning_rate: float = 1e-5


def _optimizer(net: GraspPolicyNet, backbone: DinoFeatures | None, settings: TrainSettings) -> torch.optim.AdamW:
    groups = [{"params": list(net.parameters()), "lr": settings.learning_rate, "initial_lr": settings.learning_rate}]
    if backbone is not None:
        backbone.model.train()
        groups.append({"params": list(backbone.model.parameters()), "lr": settings.backbone_learning_rate,
                       "initial_lr": settings.backbone_learning_rate})
    return torch.optim.AdamW(groups, weight_decay=settings.weight_decay)


def optimise(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int,
             total_steps: int) -> None:
    """One step on `loss`: gradients clipped to norm 1 (the network's), every group's learning rate on a
    cosine from its initial_lr, a function of the step alone so that a resumed run continues step for step."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    decay = 0.5 * (1 + np.cos(np.pi * step / total_steps))
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * decay
    optimizer.step()


def training_inputs(dataset_dir: str, out: str, backbone: str, text_model: str, resume: bool, threads: int):
    """(the dataset, the checkpoint being resumed's info or None, the backbone and the text encoder, on CPU in
    float32) that a policy's training starts from; resuming, the checkpoint's backbone and text encoder."""
    if threads:
        torch.set_num_threads(threads)
    dataset = Dataset(dataset_dir)
    info = read_info(out) if resume else None
    if info is not None:
        backbone, text_model = info.backbone, info.text_encoder
    return (dataset, info, DinoFeatures.load(backbone, device="cpu", dtype="float32"),
            TextEncoder.load(text_model, device="cpu"))


def train(dataset_dir: str, out: str, backbone: str, config_overrides: dict | None = None,
          settings: TrainSettings = TrainSettings(), resume: bool = False, text_model: str = TEXT_ENCODER,
          threads: int = 0, stop_after_epoch: int | None = None) -> dict:
    """Train (or resume) a policy on `dataset_dir`, writing checkpoints to `out` after every epoch;
    stop_after_epoch ends this call early (the run resumes later with resume=True)."""
    started = time.perf_counter()
    dataset, info, features, text = training_inputs(dataset_dir, out, backbone, text_model, resume, threads)
    if resume:
        backbone, text_model, config = info.backbone, info.text_encoder, info.config
        settings = TrainSettings(**info.training["settings"])
    if not resume:
        view = ViewSettings(**{**(config_overrides or {}).pop("view", {}), "crop_fraction": crop_fraction(features)})
        config = PolicyConfig(vision_dim=int(features.model.config.hidden_size), language_dim=text.dim, view=view,
                              **(config_overrides or {}))
    tuned = features if settings.finetune_backbone else None
    if tuned is not None and config.view.object_features == "crop":
        raise ValueError("fine-tuning the backbone trains through the frame's patch tokens; object_features "
                         "'crop' reads crops instead: fine-tune with object_features 'mask'")
    table, stats = cached_tokens(dataset, backbone, config.view, text, features, for_finetuning=tuned is not None)
    train_eps, val_eps = split_by_frame(table, settings.validation_fraction, settings.seed)
    torch.manual_seed(settings.seed)
    net = GraspPolicyNet(config)
    optimizer = _optimizer(net, tuned, settings)
    steps_per_epoch = (len(train_eps) + settings.batch_size - 1) // settings.batch_size
    total_steps = settings.epochs * steps_per_epoch
    step = 0
    if resume:
        net, _ = load_checkpoint(out)
        net.train()
        optimizer = _optimizer(net, tuned, settings)
        step = load_training_state(out, optimizer)
    else:
        present = train_eps[table.episode_row[train_eps] != NONE_ROW]
        net.fit_statistics(table.geometry.numpy(), table.episode_target[present].numpy())
    training = {"dataset": str(Path(dataset_dir).resolve()), "dataset_source": dataset.info.get("source"),
                "settings": asdict(settings), "tokens": stats, "train_episodes": len(train_eps),
                "validation_episodes": len(val_eps), "history": []}
    if resume:
        training["history"] = info.training.get("history", [])
    net.train()
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", file=sys.stderr)
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        shuffle = torch.Generator().manual_seed(settings.seed * 100003 + epoch)
        order = train_eps[torch.randperm(len(train_eps), generator=shuffle)]
        for b in range(offset, steps_per_epoch):
            loss, metrics = losses(net, table, order[b * settings.batch_size:(b + 1) * settings.batch_size], tuned)
            optimise(net, optimizer, loss, step, total_steps)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{metrics['pointer_accuracy']:.2f}")
        validation = evaluate_table(net, table, val_eps, backbone=tuned) if len(val_eps) else {}
        training["history"].append({"epoch": epoch + 1, "step": step, "loss": round(loss.item(), 4), **validation})
        training["elapsed_s"] = round(time.perf_counter() - started, 1)
        save_checkpoint(out, net, backbone, text_model, training, optimizer, step, tuned_backbone=tuned)
        bar.write(f"epoch {epoch + 1}/{settings.epochs}: loss {loss.item():.4f}, validation {validation}")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    bar.close()
    return training
