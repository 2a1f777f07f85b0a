"""Video referring segmentation (evf.video, evf predict-video) with a tiny random SAM-2 on a moving-shapes clip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.tiny_artifacts import moving_shapes

av = pytest.importorskip("av")

PROMPTS = ["the red square", "the blue disc"]


def write_lossless_mp4(path, frames) -> None:
    """PNG-in-MP4: lossless, so the decoded frames are the written ones and 'identical' means identical."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "rgb24"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def model():
    from evf.encoders import Beit3Encoder
    from evf.model import EVFSAM
    from evf.sam import Sam2Backend

    torch.manual_seed(0)
    model = EVFSAM(Beit3Encoder(size="tiny"), Sam2Backend(variant="toy")).eval()
    # SAM-2's video path empties a mask whose object score is <= 0 (the image path does not gate): random weights
    # would empty most masks and make every comparison below trivially true, so the toy head says "present".
    head = model.sam.model.sam_mask_decoder.pred_obj_score_head.layers[-1]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.constant_(head.bias, 10.0)
    return model


@pytest.fixture(scope="module")
def clip():
    return moving_shapes()


@pytest.fixture(scope="module")
def tracked(model, clip):
    return list(model.predict_video(clip, PROMPTS))


def stack(results) -> torch.Tensor:
    return torch.stack([r.masks for r in sorted(results, key=lambda r: r.index)])


def test_frame0_is_the_image_prediction_and_tracking_moves_on(model, clip, tracked):
    assert [r.index for r in tracked] == list(range(len(clip)))
    assert [r.prompted for r in tracked] == [True] + [False] * (len(clip) - 1)
    first = tracked[0].masks
    assert first.shape == (2, 48, 64) and first.dtype == torch.bool
    assert 0 < first.sum() < first.numel()  # not trivially empty or full
    first |= False  # plain tensors, not inference-mode ones: the caller may change them in place
    for i, prompt in enumerate(PROMPTS):
        assert torch.equal(first[i], model.predict(clip[0], [prompt])[0])
    # later frames come from memory, not from the text again: they differ from per-frame image prediction
    later = torch.stack([model.predict(clip[t], PROMPTS) for t in range(1, len(clip))])
    assert not torch.equal(stack(tracked)[1:], later)


def test_joint_tracking_equals_each_prompt_alone(model, clip, tracked):
    alone = stack(model.predict_video(clip, PROMPTS[1:]))  # the second object: its index differs when alone
    assert torch.equal(alone[:, 0], stack(tracked)[:, 1])


def test_reprompt_every_frame_equals_per_frame_image_prediction(model, clip):
    results = list(model.predict_video(clip, PROMPTS[:1], reprompt_every=1))
    assert all(r.prompted for r in results)
    for r in results:
        assert torch.equal(r.masks, model.predict(clip[r.index], PROMPTS[:1]))


@pytest.mark.slow
def test_reprompt_every_k_prompts_those_frames(model):
    clip = moving_shapes(count=4)
    results = list(model.predict_video(clip, PROMPTS[:1], reprompt_every=2, prompt_frame=1))
    assert [r.index for r in results] == [1, 2, 3, 0]  # forward from the prompt frame, then back to frame 0
    assert {r.index for r in results if r.prompted} == {1, 3}
    three = next(r for r in results if r.index == 3)
    assert torch.equal(three.masks[0], model.predict(clip[3], PROMPTS[:1])[0])


@pytest.mark.slow
def test_dropping_unreadable_memories_changes_nothing(model, monkeypatch):
    """A window shorter than the clip, so ``forget`` really drops memories; the masks equal keeping them all."""
    from evf.video import TextVideoPredictor

    clip = moving_shapes(count=8)
    sam = model.sam.model
    monkeypatch.setattr(sam, "num_maskmem", 2)
    monkeypatch.setattr(sam, "max_obj_ptrs_in_encoder", 2)
    stored = []
    forget = TextVideoPredictor.forget

    def counting(self, state, *args):
        forget(self, state, *args)
        stored.append(max(len(o["non_cond_frame_outputs"]) + len(o["cond_frame_outputs"])
                          for o in state["output_dict_per_obj"].values()))

    monkeypatch.setattr(TextVideoPredictor, "forget", counting)
    bounded = stack(model.predict_video(clip, PROMPTS[:1], prompt_frame=3, reprompt_every=2, max_cond_frames=2))
    assert max(stored) < 8  # never the whole clip
    monkeypatch.setattr(TextVideoPredictor, "forget", lambda *args: None)
    assert torch.equal(bounded, stack(model.predict_video(clip, PROMPTS[:1], prompt_frame=3, reprompt_every=2,
                                                           max_cond_frames=2)))


def test_mp4_and_frame_folder_give_identical_results(model, clip, tracked, tmp_path):
    from PIL import Image

    from evf.video_frames import open_frames

    write_lossless_mp4(tmp_path / "clip.mp4", clip)
    decoded = open_frames(tmp_path / "clip.mp4")
    assert len(decoded) == len(clip) and decoded.size == (48, 64)
    (tmp_path / "frames").mkdir()
    for t in range(len(decoded)):  # the folder is written FROM the decoded video
        assert np.array_equal(decoded[t], clip[t])
        Image.fromarray(decoded[t]).save(tmp_path / "frames" / f"{t:03d}.png")
    from_mp4 = stack(model.predict_video(tmp_path / "clip.mp4", PROMPTS[:1]))
    assert torch.equal(from_mp4, stack(model.predict_video(tmp_path / "frames", PROMPTS[:1])))
    assert torch.equal(from_mp4[:, 0], stack(tracked)[:, 0])


@pytest.mark.slow
def test_cli_writes_masks_overlay_video_summary(model, clip, tmp_path, capsys):
    from PIL import Image

    from evf.cli import main

    write_lossless_mp4(tmp_path / "clip.mp4", clip)
    model.save_pretrained(tmp_path / "release")
    out = tmp_path / "out"
    argv = ["predict-video", "--checkpoint", str(tmp_path / "release"), "--video", str(tmp_path / "clip.mp4"),
            "--out", str(out), "--no-progress"] + [a for p in PROMPTS for a in ("--prompt", p)]
    assert main(argv) == 0
    masks = np.stack([[np.asarray(Image.open(out / "masks" / f"{i:02d}_{slug}" / f"{t:05d}.png")) > 0
                       for i, slug in enumerate(("the-red-square", "the-blue-disc"))] for t in range(len(clip))])
    # the loaded release folder is the model minus the test's object-score head tweak: compare with the API on it
    from evf.loading import load

    loaded = load(tmp_path / "release").model.eval()
    assert np.array_equal(masks, stack(loaded.predict_video(clip, PROMPTS)).numpy())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == len(clip) and [o["prompt"] for o in summary["objects"]] == PROMPTS
    assert summary["prompted_frames"] == [0] and summary["peak_rss_mib"] > 0
    with av.open(str(out / "overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(clip)
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["files"]) == 2 * len(clip) + 2
    # indexed form, written over the earlier call's files (listed in the manifest, so evf's to replace)
    assert main([*argv, "--mask-format", "indexed", "--no-overlay-video"]) == 0
    labels = np.stack([np.asarray(Image.open(out / "masks" / f"{t:05d}.png")) for t in range(len(clip))])
    assert np.array_equal(labels == 2, masks[:, 1] & ~masks[:, 0]) and np.array_equal(labels == 1, masks[:, 0])
    assert not (out / "masks" / "00_the-red-square").exists()


@pytest.mark.parametrize("case, message", [
    ("garbage", r"cannot read video .*clip\.mp4"),
    ("no_frames", r"frame folder .*frames holds no images"),
    ("mixed", r"frames/1\.png is 32x32, 0\.png is 64x48 \(all frames must have one size\)"),
    ("missing", r"video .*nowhere\.mp4 does not exist"),
    ("out_inside", r"--out .* is inside the frame folder"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, case, message):
    import re

    from PIL import Image

    from evf.cli import main

    video = tmp_path / "frames"
    video.mkdir()
    out = tmp_path / "out"
    if case == "garbage":
        video = tmp_path / "clip.mp4"
        video.write_bytes(b"not a video at all" * 10)
    elif case == "mixed":
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(video / "0.png")
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(video / "1.png")
    elif case == "missing":
        video = tmp_path / "nowhere.mp4"
    elif case == "out_inside":
        out = video / "out"
    code = main(["predict-video", "--checkpoint", str(tmp_path / "never-loaded"), "--video", str(video),
                 "--prompt", "x", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_zero_frame_video_and_sam1_are_refused(tmp_path):
    from types import SimpleNamespace

    from evf.errors import UserError
    from evf.video import predict_video
    from evf.video_frames import open_frames

    with av.open(str(tmp_path / "empty.mp4"), "w") as container:
        stream = container.add_stream("png", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        container.start_encoding()  # a header, no frames
    with pytest.raises(UserError, match=r"^video .*empty\.mp4 has no frames"):
        open_frames(tmp_path / "empty.mp4")
    with pytest.raises(UserError, match=r"^video prediction needs a SAM-2 backend; this model's is sam1_tiny$"):
        predict_video(SimpleNamespace(sam=SimpleNamespace(name="sam1_tiny")), moving_shapes(2), ["x"])  # at the call


def test_overlay_video_of_odd_sized_frames(tmp_path):
    """H.264 needs even sides: odd frames are padded by one pixel, every frame is written, masks read back from disk."""
    from evf.video_frames import open_frames
    from evf.video_outputs import write_masks, write_overlay_video

    frames = open_frames([f[:47, :63] for f in moving_shapes()])
    masks = np.zeros((2, 47, 63), bool)
    masks[0, 10:30, 5:25] = True
    for t in range(len(frames)):
        write_masks(tmp_path, PROMPTS, t, len(frames), masks, "indexed")
    write_overlay_video(tmp_path, frames, PROMPTS, "indexed", fps=12.5)
    with av.open(str(tmp_path / "overlay.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (48, 64, 3)
    inside, outside = decoded[0][15:25, 10:20].astype(int), decoded[0][2:8, 40:60].astype(int)
    assert abs(inside.mean(axis=(0, 1)) - [135, 80, 130]).max() < 12  # red square blended with the first colour
    assert abs(outside.mean(axis=(0, 1)) - 30).max() < 6


def test_video_file_frames_read_forward_then_backward(tmp_path, monkeypatch):
    """The tracker's order with a later prompt frame; reading backward re-decodes once per block, not per frame."""
    from evf import video_frames

    source = [np.full((16, 16, 3), 10 * t, np.uint8) for t in range(24)]
    write_lossless_mp4(tmp_path / "clip.mp4", source)
    frames = video_frames.open_frames(tmp_path / "clip.mp4")
    opens = []
    real_open = av.open
    monkeypatch.setattr(frames.av, "open", lambda *a, **k: opens.append(1) or real_open(*a, **k))
    order = list(range(20, 24)) + list(range(19, -1, -1))
    assert all(np.array_equal(frames[t], source[t]) for t in order)
    assert len(opens) == 3  # the forward pass, then 20 backward frames in blocks of 16
