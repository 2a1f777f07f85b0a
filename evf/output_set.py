"""One ``evf predict`` call's outputs in its ``--out`` folder, written, replaced and reported as one unit.

``--out/predictions.json`` (the output manifest) names the files of the call that last wrote the folder::

    {"format": 1, "status": "complete", "files": ["00_the-zebra.png", "overlay.png"],
     "images": [{"image": "/data/zebra.jpg", "folder": ".", "prompts": ["the zebra"],
                 "files": ["00_the-zebra.png", "overlay.png"]}]}

Only ``"status": "complete"`` promises that every listed file is there and comes from that call. A call

1. plans its files and checks them before the model loads (``OutputSet.check``): it refuses to write over or
   remove an input image, to write over a file no earlier call listed (one evf did not write: it is never
   touched), and to go on from a manifest it cannot read;
2. takes the folder's lock (``--out/.evf.lock``, see ``evf.locks``) and checks again;
3. writes the manifest with status ``"writing"`` listing the earlier call's files and its own, then removes
   the earlier call's files (only those) and the sub-folders they leave empty;
4. writes its own files, each atomically (``evf.io``);
5. rewrites the manifest, last: ``"complete"`` with exactly its files, ``"interrupted"`` after Ctrl-C/SIGINT
   (then raised as one ``KeyboardInterrupt`` line, exit 130) or ``"failed"`` (with the error) after an error.
   A kill leaves ``"writing"``. The next call treats every listed file as evf's, whatever the status.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from evf.errors import UserError, first_line
from evf.io import leftover_siblings, write_text_atomic
from evf.locks import FolderLock

MANIFEST_NAME = "predictions.json"
LOCK_NAME = ".evf.lock"
FORMAT = 1


@dataclass(frozen=True)
class ImageOutputs:
    """One input image and the files a call writes for it; paths relative to ``--out``, POSIX style."""

    image: Path
    folder: str  # "." for the single-image form, else the image's sub-folder
    prompts: tuple[str, ...]
    files: tuple[str, ...]


def is_inside(rel: object) -> bool:
    """A manifest entry is a plain relative path below ``--out`` (a damaged or edited one must not delete elsewhere)."""
    if not isinstance(rel, str) or rel in ("", "."):
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts and path.as_posix() == rel


def folders_of(rel: str) -> list[str]:
    """The sub-folders of ``--out`` above ``rel``, outermost first."""
    return [p.as_posix() for p in reversed(PurePosixPath(rel).parents) if p.as_posix() != "."]


class OutputSet:
    def __init__(self, out: str | os.PathLike, images: Sequence[ImageOutputs]):
        self.out = Path(out)
        self.images = list(images)
        self.files = [rel for image in self.images for rel in image.files]
        self.manifest = self.out / MANIFEST_NAME
        self.presence: dict[str, list[float]] = {}  # image folder -> presence score per prompt (gRES models)

    def previous(self) -> tuple[list[str], str | None]:
        """``(files, status)`` of the manifest an earlier call left, ``([], None)`` if there is none."""
        if not os.path.lexists(self.manifest):
            return [], None
        try:
            data = json.loads(self.manifest.read_text(encoding="utf-8"))
            reason = "" if isinstance(data, dict) and data.get("format") == FORMAT else f"not format {FORMAT}"
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            data, reason = None, first_line(exc)
        files = data.get("files") if isinstance(data, dict) else None
        if not reason and not (isinstance(files, list) and all(is_inside(rel) for rel in files)):
            reason = "no list of relative 'files'"
        if reason:
            raise UserError(f"{self.manifest} is not an output manifest evf predict wrote ({reason}); "
                            "move it or choose another --out")
        return files, data.get("status")

    def check(self) -> tuple[list[str], str | None]:
        """Refuse, writing nothing, what this call must not do; returns the earlier call's files (evf's to remove)
        and the status it left."""
        previous, status = self.previous()
        owned = set(previous)
        inputs = {os.path.realpath(image.image) for image in self.images}
        for rel in previous:
            path = self.out / rel
            if os.path.lexists(path) and os.path.realpath(path) in inputs:
                raise UserError(f"refusing to remove input image {path}: an earlier evf predict wrote it into --out "
                                f"(listed in {MANIFEST_NAME}); move the image or choose another --out")
        folders = sorted({f for rel in self.files for f in folders_of(rel)}, key=lambda f: (f.count("/"), f))
        foreign = []
        for rel, is_folder in [*((f, True) for f in folders), *((f, False) for f in self.files)]:
            if rel.split("/")[0] in (MANIFEST_NAME, LOCK_NAME):
                raise UserError(f"an output would be named {self.out / rel}, a name --out keeps for evf; rename that image")
            path = self.out / rel
            if not os.path.lexists(path):
                continue
            if os.path.realpath(path) in inputs:
                raise UserError(f"refusing to overwrite input image {path} with an output of this call; "
                                "choose another --out")
            # a folder where a file goes, or a file no earlier call listed (listed ones are removed before writing)
            if (not is_folder) if path.is_dir() else (rel not in owned):
                foreign.append(path)
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise UserError(f"refusing to overwrite {foreign[0]}{more}: --out {self.out} holds files this call would "
                            f"write that no earlier evf predict listed in {MANIFEST_NAME}; move them or choose another --out")
        return previous, status

    @contextlib.contextmanager
    def writing(self, lead: bool = True) -> Iterator[None]:
        """The block writes this call's files; the manifest says how it ended.

        ``lead=False`` in the other processes of a multi-process run: they only write their share of the images,
        the first process checks, removes and writes the manifest (after every process has finished).
        """
        if not lead:
            yield
            return
        with FolderLock(self.out / LOCK_NAME, f"output folder {self.out}"):
            previous, previous_status = self.check()  # again, under the lock: another call may have written meanwhile
            owned = sorted({*previous, *self.files})
            self.write_manifest("writing", owned)
            self.remove(previous, leftovers=previous_status != "complete")
            try:
                yield
            except KeyboardInterrupt:
                self.write_manifest("interrupted", owned)
                raise KeyboardInterrupt(f"interrupted: the outputs in {self.out} are incomplete ({MANIFEST_NAME} says "
                                        "'interrupted'); run the command again") from None
            except BaseException as exc:
                self.write_manifest("failed", owned, error=first_line(exc))
                raise
            self.write_manifest("complete", self.files)

    def remove(self, previous: Sequence[str], leftovers: bool) -> None:
        """Delete the listed files of the earlier call (and, after a killed call, its temporaries), never a folder
        or anything reached through a link out of ``--out``; then the sub-folders left empty."""
        top = Path(os.path.realpath(self.out))
        emptied = set()
        for rel in previous:
            path = self.out / rel
            if path.is_dir() or not Path(os.path.realpath(path.parent)).is_relative_to(top):
                continue
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                path.unlink()
            for temporary in leftover_siblings(path) if leftovers else ():
                temporary.unlink(missing_ok=True)
            emptied.update(folders_of(rel))
        for folder in sorted(emptied, key=lambda f: (f.count("/"), f), reverse=True):
            with contextlib.suppress(OSError):  # not empty: it holds other files, which are not evf's to remove
                os.rmdir(self.out / folder)

    def write_manifest(self, status: str, files: Sequence[str], error: str | None = None) -> None:
        record = {"format": FORMAT, "status": status, "files": list(files),
                  "images": [{"image": str(i.image), "folder": i.folder, "prompts": list(i.prompts), "files": list(i.files)}
                             for i in self.images]}
        for image in record["images"]:
            if image["folder"] in self.presence:
                image["presence"] = self.presence[image["folder"]]
        if error:
            record["error"] = error
        write_text_atomic(self.manifest, json.dumps(record, indent=1) + "\n")
