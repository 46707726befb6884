"""A trained policy at run time: observation (features, masks, aligned depth, camera pose) + instruction ->
one grasp. The policy node, `dino-vla eval` and the tests all go through GraspPolicy.decide."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

from dino_vla.config import GRASP_GEOMETRIES
from dino_vla.language import Instruction, InstructionError, parse
from dino_vla.models.features import DinoFeatures
from dino_vla.models.loading import place, resolve_device
from dino_vla.models.text import DEFAULT_MODEL as TEXT_ENCODER
from dino_vla.models.text import TextEncoder
from dino_vla.geometry.depth import DepthFrame
from dino_vla.geometry.depth_region import object_regions
from dino_vla.pick import PickFailure, PickPlanner
from dino_vla.policy.checkpoint import OBJECT_TOKENS, CheckpointError, CheckpointInfo, load_checkpoint, read_info
from dino_vla.policy.maskfree_model import MASK_FREE, MaskFreeBatch
from dino_vla.policy.model import collate
from dino_vla.policy.patches import REGIONS, NoDepthError, PatchGrid, camera_channels, grasp_at
from dino_vla.policy.tokens import (ObjectTokens, crop_feature, grasp_from_target, language_text, object_tokens,
                                   reference_vectors, request_vector, vision_tokens)
from dino_vla.types import Features, Grasp, Masks, RigidTransform


@lru_cache(maxsize=16)
def _weights_digest(directory: str) -> str | None:
    try:
        path = Path(directory) / "model.safetensors"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    except (OSError, ValueError):   # a name too long for a path, a NUL byte, no permission: not a directory here
        return None


def same_weights(a: str, b: str, local: frozenset[str] = frozenset()) -> bool:
    """Whether two model sources (hub ids or save_pretrained directories) hold the same weights: equal
    names, or directories whose model.safetensors are byte for byte equal (a checkpoint's copy of a
    random-weight backbone and the original). Only sources named in `local` are read from disk: a name that
    came over the wire (DinoFeatures.model) is a name, never a path this process opens."""
    if a == b:
        return True
    digests = [_weights_digest(s) if s in local else None for s in (a, b)]
    return digests[0] is not None and digests[0] == digests[1]


class PolicyFailure(PickFailure):
    """A decision the policy could not make: `reason` as a PickFailure's (plus "feature_mismatch")."""


@dataclass(frozen=True)
class PolicyDecision:
    grasp: Grasp               # in camera_to_base.parent; score = confidence
    object_index: int          # which of the masks it chose
    confidence: float          # the pointer's probability for that object
    latency_ms: float          # tokens + network, features not included


class PolicyRuntime:
    """What both kinds of policy share at run time: the network, the text encoder and the feature check.
    load() reads a checkpoint of the subclass's KIND and refuses the other kind clearly."""

    KIND = ""

    def __init__(self, net, info: CheckpointInfo, text: TextEncoder, checkpoint: str):
        self.net, self.info, self.text, self.checkpoint = net, info, text, checkpoint
        self.device = next(net.parameters()).device
        self._language = lru_cache(maxsize=64)(lambda instruction: self.text.encode(instruction).tokens)

    @classmethod
    def load(cls, checkpoint: str, device: str = "auto"):
        kind = read_info(checkpoint).kind
        if kind != cls.KIND:
            raise CheckpointError(f"{checkpoint} holds a {kind} policy, not a {cls.KIND} one (load_policy "
                                  "chooses the runtime by the checkpoint's kind)")
        dev = resolve_device(device)
        net, info = load_checkpoint(checkpoint, dev)
        text = TextEncoder.load(info.text_encoder or TEXT_ENCODER, device=str(dev))
        if text.dim != info.config.language_dim:
            raise PolicyFailure("feature_mismatch", f"text encoder {info.text_encoder!r} gives {text.dim}-d "
                                f"tokens, the policy was trained on {info.config.language_dim}-d")
        return cls(net, info, text, str(checkpoint))

    @property
    def needs_masks(self) -> bool:
        return self.KIND == OBJECT_TOKENS

    @property
    def needs_image(self) -> bool:
        """Whether decide takes the colour image (the mask-free policy's input; an object-token policy's with
        crop features)."""
        return True

    def models(self) -> list[torch.nn.Module]:
        return [self.net, self.text.model]

    def to(self, device: str) -> int:
        """The network, the text encoder (and a crop backbone) to `device`; the bytes of GPU memory given back
        (models.loading.place)."""
        released = place(self.models(), device)
        self.device = next(self.net.parameters()).device
        return released

    @property
    def backbone(self) -> str:
        return self.info.backbone

    def check_features(self, features: Features, local_features: bool = False) -> None:
        """Features from another backbone than the policy's mean nothing to it: refuse them. `local_features`:
        features.model was set in this process (not received), so a directory holding the same weights as the
        backbone under another name counts as the backbone; a received name must equal it."""
        dim = features.patch_tokens.shape[-1]
        if dim != self.info.config.vision_dim:
            raise PolicyFailure("feature_mismatch", f"features are {dim}-d, the policy was trained on "
                                f"{self.info.config.vision_dim}-d features of {self.backbone}")
        readable = frozenset({self.backbone, features.model} if local_features else {self.backbone})
        if features.model and not same_weights(features.model, self.backbone, readable):
            raise PolicyFailure("feature_mismatch", f"features come from {features.model!r}, the policy "
                                f"was trained on {self.backbone!r}")


class GraspPolicy(PolicyRuntime):
    """The object-token policy: it grounds the instruction in class-agnostic instance masks."""

    KIND = OBJECT_TOKENS

    def __init__(self, net, info: CheckpointInfo, text: TextEncoder, checkpoint: str):
        super().__init__(net, info, text, checkpoint)
        # crop features come from the policy's own backbone, on crops of the image: the features it receives
        # are the whole frame's
        self.crop_backbone = DinoFeatures.load(info.backbone, device=str(self.device)) \
            if info.config.view.object_features == "crop" else None

    @property
    def needs_image(self) -> bool:
        return self.crop_backbone is not None

    def models(self) -> list[torch.nn.Module]:
        return super().models() + ([self.crop_backbone.model] if self.crop_backbone is not None else [])

    def decide(self, instruction: str, features: Features, frame: DepthFrame, masks: Masks,
               camera_to_base: RigidTransform, local_features: bool = False, rgb: np.ndarray | None = None
               ) -> PolicyDecision:
        """The grasp of the object the instruction names; PolicyFailure no_object when the network chooses
        "none of these" (the named object is not among the masks). local_features: see check_features. `rgb`:
        the image the masks were made from, which a policy with crop features (needs_image) reads."""
        start = time.perf_counter()
        try:
            parsed = parse(instruction)
        except InstructionError as err:
            raise PolicyFailure("bad_instruction", str(err)) from None
        target = parsed.target.phrase
        self.check_features(features, local_features)
        if len(masks) == 0:
            raise PolicyFailure("no_object", "no object masks in this frame")
        crop = None
        if self.crop_backbone is not None:
            if rgb is None or rgb.shape[:2] != masks.masks.shape[1:]:
                raise PolicyFailure("bad_input", "this policy reads each object's crop of the image: it needs the "
                                    "image the masks were made from" + ("" if rgb is None else
                                    f" (image {rgb.shape[1]}x{rgb.shape[0]}, masks "
                                    f"{masks.masks.shape[2]}x{masks.masks.shape[1]})"))
            crop = partial(crop_feature, self.crop_backbone.extract, rgb)
        objects = object_tokens(features, frame, masks.masks, camera_to_base, self.info.config.view, masks.colours,
                                crop)
        if len(objects) == 0:
            reasons = "; ".join(sorted(set(objects.skipped.values())))
            raise PolicyFailure("no_points", f"none of the {len(masks)} masks has usable depth ({reasons})")
        logits, targets = self.forward(parsed, features, objects)
        probabilities = torch.softmax(logits, 0)
        choice = int(torch.argmax(probabilities))
        confidence = float(probabilities[choice])
        if choice == 0:
            raise PolicyFailure("no_object", f"the policy finds no {target!r} among the {len(objects)} objects in "
                                             f"view (confidence {confidence:.2f})")
        row = choice - 1
        grasp = grasp_from_target(targets[row].numpy(), objects.anchors[row], camera_to_base.parent, target,
                                  confidence)
        grasp = Grasp(grasp.position, grasp.approach, grasp.yaw, max(grasp.width, 0.0), grasp.score,
                      grasp.phrase, grasp.frame)
        return PolicyDecision(grasp, objects.kept[row], confidence, (time.perf_counter() - start) * 1e3)

    @torch.inference_mode()
    def forward(self, instruction: Instruction, features: Features, objects: ObjectTokens
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pointer logits (1 + N,): "none", then the objects; grasp targets (N, 5) in metres/radians) for one
        observation's objects and a parsed instruction."""
        batch = collate([self._language(language_text(instruction))], [request_vector(instruction)],
                        [vision_tokens(features, self.info.config.view.vision_grid)],
                        [objects.geometry], [objects.pooled], [objects.coverage],
                        [reference_vectors(instruction, self._language)]).to(self.device)
        logits, normalised = self.net(batch)
        return logits[0].cpu(), self.net.denormalise_targets(normalised[0]).cpu()


DEPTH, LEARNED = GRASP_GEOMETRIES


@dataclass(frozen=True)
class MaskFreeDecision:
    grasp: Grasp               # in camera_to_base.parent; score = confidence
    pixel: tuple[float, float]  # the camera pixel the heatmap pointed at (u, v)
    confidence: float          # the heatmap's probability of the chosen patch
    latency_ms: float          # camera channels + network (+ the depth planner), features not included
    geometry: str = LEARNED    # where the grasp's pose came from: GRASP_GEOMETRIES
    note: str = ""             # why the depth planner's grasp was not taken, when it was asked for


class MaskFreePolicy(PolicyRuntime):
    """The mask-free policy: DINOv2 patch tokens, the camera's colour and depth and the words; no masks."""

    KIND = MASK_FREE

    def grid(self, features: Features, image_shape: tuple[int, int]) -> PatchGrid:
        config = self.info.config
        grid = PatchGrid.of(image_shape, features.input_size, features.patch_size, config.crop_fraction)
        if (grid.rows, grid.cols) != (config.rows, config.cols):
            raise PolicyFailure("feature_mismatch", f"features are a {grid.rows}x{grid.cols} patch grid, the "
                                f"policy was trained on {config.rows}x{config.cols}")
        return grid

    def decide(self, instruction: str, features: Features, rgb: np.ndarray, frame: DepthFrame,
               camera_to_base: RigidTransform, local_features: bool = False,
               planner: PickPlanner | None = None) -> MaskFreeDecision:
        """The grasp at the patch the heatmap puts highest; PolicyFailure no_object when "none" wins (the
        named object is not in view), no_points when the chosen pixel has no depth around it. With a
        planner, the grasp's pose is the planner's for the object the depth shows at that pixel (the policy
        then only chooses where), the learned one where the planner finds none."""
        start = time.perf_counter()
        try:
            parsed = parse(instruction)
        except InstructionError as err:
            raise PolicyFailure("bad_instruction", str(err)) from None
        self.check_features(features, local_features)
        if rgb.shape[:2] != frame.metres.shape:
            raise PolicyFailure("bad_input", f"image {rgb.shape[1]}x{rgb.shape[0]} and depth "
                                f"{frame.metres.shape[1]}x{frame.metres.shape[0]} differ: depth must be aligned")
        grid = self.grid(features, rgb.shape[:2])
        # cut once: the camera channels read the objects' shapes, the depth planner the one pointed at
        regions = object_regions(frame, camera_to_base, self.info.config.table_height_m, REGIONS)
        camera = camera_channels(rgb, frame, camera_to_base, grid, self.info.config.table_height_m, regions)
        logits, offsets = self.forward(parsed, features, camera)
        probabilities = torch.softmax(logits, 0)
        choice = int(torch.argmax(probabilities))
        confidence = float(probabilities[choice])
        target = parsed.target.phrase
        if choice == 0:
            raise PolicyFailure("no_object", f"the policy finds no {target!r} in view (confidence {confidence:.2f})")
        try:
            chosen = grasp_at(grid, choice - 1, offsets[choice - 1].numpy(), frame, camera_to_base)
        except NoDepthError as err:
            raise PolicyFailure("no_points", str(err)) from None
        grasp = Grasp(chosen.position, np.array([0.0, 0.0, -1.0]), chosen.yaw, chosen.width, confidence, target,
                      camera_to_base.parent)
        geometry, note = LEARNED, ""
        if planner is not None:
            try:
                planned = planner.plan_at_pixel(frame, chosen.pixel, target, confidence, camera_to_base,
                                                cut=regions)
                grasp = Grasp(planned.position, planned.approach, planned.yaw, planned.width, confidence, target,
                              planned.frame)
                geometry = DEPTH
            except PickFailure as err:
                note = f"depth planner: {err.reason}: {err}"
        return MaskFreeDecision(grasp, chosen.pixel, confidence, (time.perf_counter() - start) * 1e3, geometry,
                                note)

    @torch.inference_mode()
    def forward(self, instruction: Instruction, features: Features, camera: np.ndarray
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (1 + P,): "none", then the patches; offsets (P, OFFSET_DIM) in pixels/metres/radians)."""
        language = torch.as_tensor(self._language(language_text(instruction)))
        patches = torch.as_tensor(np.asarray(features.patch_tokens, np.float32))
        patches = patches.reshape(1, -1, patches.shape[-1])
        batch = MaskFreeBatch(patches, torch.as_tensor(camera)[None], torch.zeros(1, dtype=torch.long),
                              language[None], torch.zeros(1, len(language), dtype=torch.bool),
                              torch.as_tensor(request_vector(instruction))[None]).to(self.device)
        logits, normalised, _ = self.net(batch)
        return logits[0].cpu(), self.net.denormalise_offsets(normalised[0]).cpu()


def load_policy(checkpoint: str, device: str = "auto") -> GraspPolicy | MaskFreePolicy:
    """The run time of the checkpoint's kind (CheckpointError: not a policy checkpoint)."""
    return (MaskFreePolicy if read_info(checkpoint).kind == MASK_FREE else GraspPolicy).load(checkpoint, device)
