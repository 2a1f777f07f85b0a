"""Real photos and real annotation files (issue 14 §3).

- EXIF orientation is applied, as ``cv2.imread`` (the official demo's loader) does;
- CMYK/YCCK JPEGs, palettes, gray+alpha, 1-bit and 16-bit files become the RGB that cv2 reads;
- decompression bombs and needle-thin images are one ``evf: error:`` line naming the file and the limit;
- RefCLEF's lists of RLE dicts are decoded, and ``--check`` fails when most masks come out empty;
- Python-2 byte strings in refs pickles are read as UTF-8.

References are independent implementations (cv2's decoder and colour conversion, numpy flips, pycocotools'
own encoder), never ``evf.io`` itself.
"""
from __future__ import annotations

import io
import json
import pickle
import pickletools
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datamodules.common import coco_mask
from datamodules.refcoco import RefCocoDataModule
from datamodules.testing import refcoco as refcoco_fixture
from evf.cli import main as evf
from evf.io import ImageReadError, read_image
from evf.safe_pickle import loads_plain

ORIENTATION = 0x0112
# EXIF orientation -> how to turn the stored pixels upright, written out with numpy (EXIF 2.3, tag 274)
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                 # mirrored left-right
    3: lambda a: a[::-1, ::-1],              # rotated 180
    4: lambda a: a[::-1],                    # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),       # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),            # stored rotated 90 counter-clockwise: turn clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, 1),             # stored rotated 90 clockwise: turn counter-clockwise
}


def blocks(h: int = 5, w: int = 7, cell: int = 8, seed: int = 0) -> np.ndarray:
    """Random colours in ``cell``-pixel blocks (so JPEG keeps them), ``uint8 [h*cell, w*cell, 3]``."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), np.ones((cell, cell, 1), np.uint8))


def cv2_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"cv2 cannot read {path}"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def save_with_orientation(path: Path, array: np.ndarray, orientation: int) -> Path:
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[ORIENTATION] = orientation
    im.save(path, exif=exif.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def one_error_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("evf: error:"), err
    return lines[0]


# -- EXIF orientation ------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_cv2_imread(tmp_path, orientation):
    stored = blocks()  # 40 x 56: orientations 5-8 come out 56 x 40
    png = save_with_orientation(tmp_path / "photo.png", stored, orientation)
    jpg = save_with_orientation(tmp_path / "photo.jpg", stored, orientation)
    expected = UPRIGHT[orientation](stored)
    assert np.array_equal(read_image(png), expected)
    assert np.array_equal(cv2_rgb(png), expected)  # the reference agrees with the hand-built array
    assert max_diff(read_image(jpg), cv2_rgb(jpg)) <= 2  # two JPEG decoders


def test_damaged_exif_keeps_the_stored_pixels(tmp_path):
    path = tmp_path / "odd.png"
    save_with_orientation(path, blocks(), 9)  # not an orientation: ignored, as cv2 does
    assert np.array_equal(read_image(path), blocks())


def test_predict_mask_of_a_phone_photo_is_upright(release, tmp_path, capsys):
    photo = save_with_orientation(tmp_path / "phone.jpg", blocks(), 6)  # stored 40 x 56, shown 56 x 40
    out = tmp_path / "out"
    assert evf(["predict", "--checkpoint", str(release), "--image", str(photo), "--out", str(out),
                "--prompt", "the square"]) == 0, capsys.readouterr().err
    with Image.open(out / "00_the-square.png") as mask, Image.open(out / "overlay.png") as overlay:
        assert mask.size == overlay.size == (40, 56)  # PIL sizes are (width, height)


# -- colour modes ----------------------------------------------------------------------------------
def jpeg_cmyk(path: Path, cmyk: np.ndarray, adobe_transform: int) -> Path:
    """A 4-channel JPEG; ``adobe_transform`` 0 = CMYK, 2 = YCCK (how Photoshop stores most CMYK photos)."""
    buffer = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(buffer, "JPEG", quality=95)
    data = bytearray(buffer.getvalue())
    flag = data.index(b"Adobe") + 11  # APP14: "Adobe", version (2), flags0 (2), flags1 (2), transform (1)
    data[flag] = adobe_transform
    path.write_bytes(bytes(data))
    return path


def write_mode(path: Path, mode: str, rgb: np.ndarray) -> tuple[Path, np.ndarray | None]:
    """A file in ``mode``; returns it and, where known, the RGB it shows (else only cv2 is the reference)."""
    if mode == "CMYK":
        return jpeg_cmyk(path.with_suffix(".jpg"), np.array(Image.fromarray(rgb).convert("CMYK")), 0), rgb
    if mode == "YCCK":  # libjpeg decodes YCCK to the inverse of the YCbCr-coded RGB, with K=0 stored as 255 - 0
        ycc = np.array(Image.fromarray(rgb).convert("YCbCr"))
        stored = np.concatenate([ycc, np.zeros(rgb.shape[:2] + (1,), np.uint8)], axis=2)
        return jpeg_cmyk(path.with_suffix(".jpg"), stored, 2), rgb
    if mode == "P":
        Image.fromarray(rgb).quantize(16).save(path)
    elif mode == "P+transparency":
        Image.fromarray(rgb).quantize(16).save(path, transparency=3)
    elif mode == "LA":
        Image.fromarray(rgb).convert("LA").save(path)
    elif mode == "1":
        Image.fromarray(rgb).convert("1").save(path)
    elif mode == "I;16":
        Image.fromarray((rgb[..., 0].astype(np.uint16) * 257 + rgb[..., 1]).astype(np.uint16)).save(path)
    return path, None


@pytest.mark.parametrize("mode", ["CMYK", "YCCK", "P", "P+transparency", "LA", "1", "I;16"])
def test_colour_modes_become_the_rgb_cv2_reads(tmp_path, mode):
    rgb = blocks()
    path, shown = write_mode(tmp_path / "image.png", mode, rgb)
    with Image.open(path) as im:  # the file really is in the mode under test
        assert im.mode == {"YCCK": "CMYK", "P+transparency": "P"}.get(mode, mode)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == rgb.shape
    lossy = path.suffix == ".jpg"
    assert max_diff(image, cv2_rgb(path)) <= (2 if lossy else 0)
    if shown is not None:
        assert max_diff(image, shown) <= 4  # the photo's colours, not their negative


# -- sizes -----------------------------------------------------------------------------------------
def png_header_only_bomb(path: Path, side: int = 20_000) -> Path:
    """A 1-bit PNG of ``side``² pixels whose zero rows deflate to a few kB: opening it must not decode it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case", ["bomb", "needle"])
def test_predict_refuses_bombs_and_needles_in_one_line(release, tmp_path, capsys, case):
    if case == "bomb":
        path, needles = png_header_only_bomb(tmp_path / "bomb.png"), ("400000000 pixels", "limit", "178956970")
    else:
        path = tmp_path / "needle.png"
        Image.fromarray(np.zeros((1, 10_000, 3), np.uint8)).save(path)
        needles = ("10000x1", "limit of 100:1")
    assert path.stat().st_size < 200_000
    out = tmp_path / "out"
    line = one_error_line(evf(["predict", "--checkpoint", str(release), "--image", str(path), "--out", str(out),
                               "--prompt", "the square"]), capsys.readouterr().err)
    for needle in (str(path), *needles):
        assert needle in line, line
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_elongated_but_reasonable_images_still_load(tmp_path):
    path = tmp_path / "panorama.png"
    Image.fromarray(np.zeros((10, 1000, 3), np.uint8)).save(path)
    assert read_image(path).shape == (10, 1000, 3)
    Image.fromarray(np.zeros((10, 1001, 3), np.uint8)).save(path)
    with pytest.raises(ImageReadError, match="panorama.png"):
        read_image(path)


# -- RefCLEF: lists of RLE dicts -------------------------------------------------------------------
def rle(mask: np.ndarray, compressed_as: type = str) -> dict:
    from pycocotools import mask as mask_utils

    if compressed_as is list:  # uncompressed: run lengths, column-major, starting with a run of zeros
        flat = mask.flatten(order="F").astype(np.int8)
        changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = encoded["counts"] if compressed_as is bytes else encoded["counts"].decode("ascii")
    return {"size": list(mask.shape), "counts": counts}


@pytest.mark.parametrize("counts", [str, bytes, list])
def test_list_of_rle_dicts_is_decoded_and_united(counts):
    rng = np.random.default_rng(1)
    a, b = rng.random((12, 9)) > 0.7, rng.random((12, 9)) > 0.8
    assert np.array_equal(coco_mask([rle(a, counts)], 12, 9), a)
    assert np.array_equal(coco_mask([rle(a, counts), rle(b, counts)], 12, 9), a | b)
    with pytest.raises(ValueError, match=r"size \[12, 9\] on an image of size \[9, 12\]"):
        coco_mask([rle(a, counts)], 9, 12)


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    return refcoco_fixture.write(tmp_path_factory.mktemp("refer"))


def test_refclef_fixture_is_in_the_real_format_and_decodes(refer):
    instances = json.loads((refer["root"] / "refclef" / "instances.json").read_text())
    for ann in instances["annotations"]:
        seg = ann["segmentation"]
        assert isinstance(seg, list) and len(seg) == 1 and set(seg[0]) == {"size", "counts"}
        assert isinstance(seg[0]["counts"], str)
    dm = RefCocoDataModule(str(refer["root"]), dataset="refclef", split_by="unc")
    for split in ("train", "val", "testA", "testB"):
        expected = refer["samples"][("refclef", "unc", split)]
        raw = dm.raw_dataset(split, train=False)
        assert len(raw) == len(expected) > 0
        for i, want in enumerate(expected):
            assert want["mask"].any() and np.array_equal(raw[i]["mask"], want["mask"])


def test_check_fails_when_most_masks_are_empty(refer, tmp_path, capsys):
    assert evf(["prepare", "refclef", "--check", "--root", str(refer["root"]), "--no-progress"]) == 0
    capsys.readouterr()
    root = tmp_path / "refer"
    shutil.copytree(refer["root"], root)
    instances_file = root / "refclef" / "instances.json"
    instances = json.loads(instances_file.read_text())
    for ann in instances["annotations"]:
        ann["segmentation"] = []  # what every mask came out as when RefCLEF's RLE lists were dropped
    instances_file.write_text(json.dumps(instances))
    assert evf(["prepare", "refclef", "--check", "--root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "FATAL" in out and "empty masks" in out and out.rstrip().endswith("FAILED: 4 of 4 splits with fatal problems")


# -- Python-2 pickles ------------------------------------------------------------------------------
def py2_str(data: bytes) -> bytes:
    """How Python 2 pickled its (byte) ``str`` with protocol 2: SHORT_BINSTRING, no encoding recorded."""
    return b"U" + bytes([len(data)]) + data


def test_python2_byte_strings_are_read_as_utf8():
    text = "le café à gauche 😀"
    protocol2 = (b"\x80\x02](}(" + py2_str(b"sent") + py2_str(text.encode("utf-8"))
                 + py2_str(b"raw") + py2_str("Café".encode("latin-1")) + b"ue.")
    assert loads_plain(protocol2) == [{"sent": text, "raw": "Café"}]  # latin-1 only where UTF-8 fails
    protocol0 = b"(lp0\n(dp1\nS'sent'\np2\nS'caf\\xc3\\xa9'\np3\nsa."  # Python 2's default protocol
    assert loads_plain(protocol0) == [{"sent": "café"}]
    # Python 3 pickles keep their types: str is str, bytes stay bytes
    assert loads_plain(pickle.dumps([text, b"\xff"], protocol=4)) == [text, b"\xff"]


def test_refs_file_written_by_python2_gives_utf8_sentences(refer, tmp_path):
    root = tmp_path / "refer"
    shutil.copytree(refer["root"], root)
    refs = [dict(r) for r in refer["refs"][("refcoco", "unc")]]
    refs[0]["sentences"] = [{**s, "sent": "the naïve café sign"} for s in refs[0]["sentences"]]
    data = refcoco_fixture.python2_pickle(refs)
    opcodes = {op.name for op, _, _ in pickletools.genops(data)}
    assert "SHORT_BINSTRING" in opcodes and not opcodes & {"BINUNICODE", "SHORT_BINUNICODE"}  # as Python 2 wrote
    (root / "refcoco" / "refs(unc).p").write_bytes(data)
    texts = {s["text"] for s in RefCocoDataModule(str(root)).raw_dataset(refs[0]["split"], train=False)}
    assert "the naïve café sign" in texts
