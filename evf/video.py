"""Text-prompted video segmentation with a SAM-2 backend (EVF-SAM2 on video).

    for frame in model.predict_video("clip.mp4", ["the red square", "the blue disc"], reprompt_every=10):
        frame.index, frame.masks          # int, bool [N, H, W] on the CPU (one mask per prompt, in prompt order)

Each prompt is one tracked object. On the prompt frame (0 by default) every prompt's EVF token (BEiT-3 on that
frame + the projector) becomes the object's only sparse prompt, exactly as the image path decodes it; SAM-2's
memory then carries the objects through the video: forward to the end, then backward to frame 0 when the prompt
frame is later. ``reprompt_every=K`` runs the text prompts again on every K-th frame from the prompt frame
(the official release lacks this): such a frame is segmented from the text alone, without memory, like an image,
and becomes a conditioning frame the following frames attend to, which corrects drift.

How the token reaches SAM-2 (official EVF-SAM2 video: a text argument added inside its vendored SAM-2 replaces
the point prompt on the first frame): here ``TextVideoPredictor`` subclasses the installed ``sam2`` package's
``SAM2VideoPredictor``; ``add_text`` calls its public ``add_new_points_or_box`` with one padding point while a
forward hook on the prompt encoder swaps the sparse embedding for the text token. One point keeps SAM-2's
multimask choice the same as with no point (best of tokens 1-3 by predicted IoU on a new frame).

Memory stays bounded: frames are read on demand (``evf.video_frames``), ``state["images"]`` is a lazy view, and
per-frame memories that SAM-2 can no longer read are dropped as tracking goes on (``forget``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sam2.modeling.sam2_utils import select_closest_cond_frames
from sam2.sam2_video_predictor import SAM2VideoPredictor

from evf.errors import UserError
from evf.predictor import placement
from evf.transforms import to_rgb_uint8
from evf.video_frames import Frames, open_frames

DEFAULT_MAX_COND_FRAMES = 4  # with re-prompting: the text-prompted frames each frame attends to (most recent first)


@dataclass
class VideoFrame:
    """One frame's result. masks: bool ``[N, H, W]``; object_scores: fp32 ``[N]``, SAM-2's object-presence logits
    (a mask is empty where its score is <= 0); prompted: whether the text prompts ran on this frame."""

    index: int
    masks: torch.Tensor
    object_scores: torch.Tensor
    prompted: bool


class LazyImages:
    """``state["images"]`` for SAM-2: frame ``i`` in the backend's SAM view, computed when the tracker asks for it."""

    def __init__(self, frames: Frames, view):
        self.frames, self.view = frames, view

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.view(to_rgb_uint8(self.frames[index]))[0]


class TextVideoPredictor(SAM2VideoPredictor):
    """SAM-2's video predictor sharing the weights of an image-path ``SAM2Base``, with text-token prompts."""

    text_token: torch.Tensor | None = None

    @classmethod
    def sharing(cls, model: torch.nn.Module) -> TextVideoPredictor:
        """A predictor over ``model``'s own modules and parameters (no copy), with the video settings
        ``sam2.build_sam.build_sam2_video_predictor`` applies, except hole filling (needs sam2's CUDA extension)."""
        tracker = cls.__new__(cls)
        tracker.__dict__.update({k: type(v)(v) if isinstance(v, dict) else v for k, v in model.__dict__.items()})
        tracker.fill_hole_area = 0
        tracker.non_overlap_masks = False
        tracker.clear_non_cond_mem_around_input = False
        tracker.add_all_frames_to_correct_as_cond = False
        tracker.binarize_mask_from_pts_for_mem_enc = True
        return tracker

    def new_state(self, images: LazyImages, size: tuple[int, int], offload_state_to_cpu: bool = False) -> dict:
        """What ``init_state`` builds, over lazy images instead of a JPEG folder decoded into memory."""
        device = self.device
        return {
            "images": images, "num_frames": len(images), "offload_video_to_cpu": True,
            "offload_state_to_cpu": offload_state_to_cpu, "video_height": size[0], "video_width": size[1],
            "device": device, "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
            "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {}, "constants": {},
            "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
            "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
        }

    def add_text(self, state: dict, frame_idx: int, obj_id: int, token: torch.Tensor) -> None:
        """Prompt object ``obj_id`` on ``frame_idx`` with one EVF token ``[1, 1, prompt_dim]``."""
        self.text_token = token
        try:
            self.add_new_points_or_box(state, frame_idx, obj_id, points=[[0.0, 0.0]], labels=[-1], normalize_coords=False)
        finally:
            self.text_token = None

    def _forward_sam_heads(self, backbone_features, *args, **kwargs):
        if self.text_token is None:
            return super()._forward_sam_heads(backbone_features, *args, **kwargs)
        token = self.text_token

        def text_only(_module, _inputs, output):
            sparse, dense = output
            return token.to(sparse.dtype).expand(len(sparse), -1, -1), dense

        handle = self.sam_prompt_encoder.register_forward_hook(text_only)
        try:
            return super()._forward_sam_heads(backbone_features, *args, **kwargs)
        finally:
            handle.remove()

    @torch.inference_mode()
    def track_frame(self, state: dict, frame_idx: int, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Every object on one frame (what one step of ``propagate_in_video`` does, without its progress bar):
        -> (mask logits ``[N, 1, H, W]`` at video size, object-score logits ``[N]``)."""
        logits, scores = [], []
        for obj_idx, outputs in state["output_dict_per_obj"].items():
            out = outputs["cond_frame_outputs"].get(frame_idx)
            if out is None:
                out, _ = self._run_single_frame_inference(
                    inference_state=state, output_dict=outputs, frame_idx=frame_idx, batch_size=1, is_init_cond_frame=False,
                    point_inputs=None, mask_inputs=None, reverse=reverse, run_mem_encoder=True)
                outputs["non_cond_frame_outputs"][frame_idx] = out
            state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
            logits.append(out["pred_masks"].to(state["device"]))
            scores.append(out["object_score_logits"].reshape(-1).float())
        _, video_res = self._get_orig_video_res_output(state, torch.cat(logits))
        return video_res, torch.cat(scores)

    def forget(self, state: dict, frame_idx: int, reverse: bool, anchor: int, keep_near_anchor: int) -> None:
        """Drop the memories no later frame of this pass (nor the other pass, starting next to ``anchor``) reads:
        non-conditioning frames further back than SAM-2's memory and object-pointer windows, and (with a limit on
        attended conditioning frames) conditioning frames that are no longer among the closest ones."""
        window = max(self.num_maskmem, self.max_obj_ptrs_in_encoder)
        behind = (lambda s: s >= frame_idx + window) if reverse else (lambda s: s <= frame_idx - window)
        for outputs in state["output_dict_per_obj"].values():
            stale = outputs["non_cond_frame_outputs"]
            for s in [s for s in stale if behind(s) and abs(s - anchor) > window]:
                del stale[s]
            cond = outputs["cond_frame_outputs"]
            if 0 < self.max_cond_frames_in_attn < len(cond):
                selected, _ = select_closest_cond_frames(frame_idx, cond, self.max_cond_frames_in_attn)
                for s in [s for s in cond if s not in selected and abs(s - anchor) > keep_near_anchor]:
                    del cond[s]


def text_tokens(model, frame: np.ndarray, prompts: Sequence[str]) -> list[torch.Tensor]:
    """One EVF token ``[1, 1, prompt_dim]`` per prompt on ``frame``; each prompt is tokenized alone, so an
    object's token does not depend on the other prompts (joint tracking == tracking each prompt alone)."""
    device, dtype = placement(model.encoder)
    enc = model.encoder.image_view(to_rgb_uint8(frame))[None].to(device, dtype)
    out = []
    for prompt in prompts:
        ids = model.encoder.tokenizer([prompt])
        out.append(model.prompt_tokens(enc, ids["input_ids"].to(device), ids["padding_mask"].to(device)))
    return out


def processing_order(count: int, prompt_frame: int) -> list[tuple[int, bool]]:
    """(frame, reverse) in tracking order: the prompt frame to the end, then back from it to frame 0."""
    return [(t, False) for t in range(prompt_frame, count)] + [(t, True) for t in range(prompt_frame - 1, -1, -1)]


def predict_video(model, frames, prompts: Sequence[str], prompt_frame: int = 0, reprompt_every: int | None = None,
                  max_cond_frames: int = DEFAULT_MAX_COND_FRAMES, offload_state_to_cpu: bool = False) -> Iterator[VideoFrame]:
    """Track each prompt through ``frames`` (a video file, a frame folder, a sequence of ``uint8 [H, W, 3]``
    arrays or an ``evf.video_frames.Frames``); yields a ``VideoFrame`` per frame in tracking order (see the module
    docstring). ``max_cond_frames`` (with ``reprompt_every``): text-prompted frames each frame attends to, >= 2.
    ``offload_state_to_cpu``: keep SAM-2's per-frame memories in CPU memory (less GPU memory, a little slower).
    Put the model in ``eval()`` mode and on its device first; bad arguments are refused at the call, before any
    frame is tracked. Half-precision weights: iterate under ``torch.autocast`` (as the official demo runs)."""
    from evf.sam.sam2 import Sam2Backend

    if not isinstance(model.sam, Sam2Backend):
        raise UserError(f"video prediction needs a SAM-2 backend; this model's is {model.sam.name}")
    prompts = list(prompts)
    if not prompts:
        raise UserError("give at least one prompt")
    if reprompt_every is not None and reprompt_every < 1:
        raise UserError(f"reprompt_every must be a positive number of frames, got {reprompt_every}")
    if max_cond_frames < 2:
        raise UserError(f"max_cond_frames must be at least 2 (SAM-2 attends the closest frame on each side), got {max_cond_frames}")
    frames = open_frames(frames)
    if not 0 <= prompt_frame < len(frames):
        raise UserError(f"prompt frame {prompt_frame} is outside the video's {len(frames)} frames")
    results = tracked_frames(model, frames, prompts, prompt_frame, reprompt_every, max_cond_frames, offload_state_to_cpu)
    # cloned outside inference mode: plain tensors the caller may change in place
    return (VideoFrame(r.index, r.masks.clone(), r.object_scores.clone(), r.prompted) for r in results)


@torch.inference_mode()
def tracked_frames(model, frames: Frames, prompts: list[str], prompt_frame: int, reprompt_every: int | None,
                   max_cond_frames: int, offload_state_to_cpu: bool) -> Iterator[VideoFrame]:
    """The generator ``predict_video`` returns once its arguments are checked."""
    tracker = TextVideoPredictor.sharing(model.sam.model)
    if reprompt_every is not None:
        tracker.max_cond_frames_in_attn = max_cond_frames
    keep_near_anchor = max_cond_frames * (reprompt_every or 1)
    state = tracker.new_state(LazyImages(frames, model.sam.image_view), frames.size, offload_state_to_cpu)
    for t, reverse in processing_order(len(frames), prompt_frame):
        prompted = t == prompt_frame or (reprompt_every is not None and abs(t - prompt_frame) % reprompt_every == 0)
        if prompted:
            for obj_id, token in enumerate(text_tokens(model, frames[t], prompts)):
                tracker.add_text(state, t, obj_id, token)
            tracker.propagate_in_video_preflight(state)  # encodes the new prompts' masks into memory
        logits, scores = tracker.track_frame(state, t, reverse)
        yield VideoFrame(t, (logits[:, 0] > 0).cpu(), scores.cpu(), prompted)
        tracker.forget(state, t, reverse, prompt_frame, keep_near_anchor)
