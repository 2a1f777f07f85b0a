"""No unsafe deserialisation anywhere in the package source.

Rules (each an AST check, so comments and strings never trigger it):
- ``torch.load`` only with ``weights_only=True``;
- ``pickle.load`` / ``pickle.loads`` / ``pickle.Unpickler`` only inside the restricted unpickler ``evf/safe_pickle.py``;
- ``numpy.load`` never with ``allow_pickle=True``;
- ``yaml.load`` only with ``Loader=yaml.SafeLoader`` (or ``CSafeLoader``); ``yaml.unsafe_load`` / ``full_load`` never.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("evf", "datamodules")
RESTRICTED_UNPICKLER = "evf/safe_pickle.py"
PICKLE_LOADERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
                  "_pickle.Unpickler", "dill.load", "dill.loads", "joblib.load", "pandas.read_pickle"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


def import_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin (``np`` -> ``numpy``, ``load`` -> ``torch.load``)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str) -> list[str]:
    """``"file:line: reason"`` for every unsafe load in ``source``."""
    tree = ast.parse(source, filename)
    aliases = import_aliases(tree)
    problems = []
    for node in ast.walk(tree):
        target = dotted(node.func, aliases) if isinstance(node, ast.Call) else None
        if isinstance(node, ast.ClassDef):  # subclassing the unpickler counts as using it
            for base in node.bases:
                if dotted(base, aliases) in PICKLE_LOADERS and filename != RESTRICTED_UNPICKLER:
                    problems.append(f"{filename}:{node.lineno}: subclass of {dotted(base, aliases)}")
        if target is None:
            continue
        if target == "torch.load" and not is_true(keyword(node, "weights_only")):
            problems.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        elif target in PICKLE_LOADERS and filename != RESTRICTED_UNPICKLER:
            problems.append(f"{filename}:{node.lineno}: {target} outside {RESTRICTED_UNPICKLER}")
        elif target == "numpy.load" and not (keyword(node, "allow_pickle") is None
                                             or isinstance(keyword(node, "allow_pickle"), ast.Constant)
                                             and keyword(node, "allow_pickle").value is False):
            problems.append(f"{filename}:{node.lineno}: numpy.load with allow_pickle")
        elif target in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            problems.append(f"{filename}:{node.lineno}: {target}")
        elif target in ("yaml.load", "yaml.load_all"):
            loader = keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            name = dotted(loader, aliases) if loader is not None else None
            if name is None or name.rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                problems.append(f"{filename}:{node.lineno}: {target} without Loader=SafeLoader")
    return problems


def package_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (REPO / folder).rglob("*.py"))


def test_package_has_no_unsafe_loads():
    files = package_files()
    assert any(p.name == "checkpoint.py" for p in files)  # the scan really looks at the package
    offenders = [problem for path in files
                 for problem in unsafe_loads(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())]
    assert not offenders, "unsafe loads:\n" + "\n".join(offenders)


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x')",
    "import torch\ntorch.load('x', weights_only=False)",
    "from torch import load\nload('x')",
    "import pickle\npickle.load(open('x', 'rb'))",
    "import pickle as pk\npk.loads(b'')",
    "from pickle import Unpickler\nclass U(Unpickler): pass",
    "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
    "import numpy\nnumpy.load('x.npz', allow_pickle=flag)",
    "import yaml\nyaml.load(open('c.yaml'))",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.unsafe_load(text)",
])
def test_scanner_flags_unsafe_snippets(snippet):
    assert len(unsafe_loads(snippet, "evf/example.py")) == 1


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x', map_location='cpu', weights_only=True)",
    "import numpy as np\nnp.load('x.npy')\nnp.load('y.npy', allow_pickle=False)",
    "import yaml\nyaml.safe_load(text)\nyaml.load(text, Loader=yaml.SafeLoader)\nyaml.load(text, yaml.CSafeLoader)",
    "import pickle\npickle.dumps({})  # writing is fine",
    "# torch.load('x') in a comment\ns = 'pickle.load(f)'",
])
def test_scanner_accepts_safe_snippets(snippet):
    assert unsafe_loads(snippet, "evf/example.py") == []


def test_restricted_unpickler_is_the_only_exception():
    snippet = "import pickle\nclass P(pickle.Unpickler): pass\npickle.load(f)"
    assert unsafe_loads(snippet, RESTRICTED_UNPICKLER) == []
    assert len(unsafe_loads(snippet, "datamodules/refcoco.py")) == 2


class Exploit:
    """Unpickling this would call ``marker.touch()``: it must never happen."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_reader_refuses_code_in_pickles(tmp_path):
    import torch

    from evf.checkpoint import CheckpointError, load_state_dict

    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit(marker)}, bad)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_state_dict(bad)
    assert not marker.exists()


def test_annotation_unpickler_refuses_code(tmp_path):
    import pickle

    safe_pickle = pytest.importorskip("evf.safe_pickle")
    marker = tmp_path / "pwned"
    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(pickle.dumps([{"ref_id": 1}, Exploit(marker)], protocol=2))
    with pytest.raises(ValueError, match="forbidden global"):
        safe_pickle.load_plain_pickle(bad)
    assert not marker.exists()
    good = tmp_path / "refs(good).p"
    good.write_bytes(pickle.dumps([{"ref_id": 1, "sentences": [{"sent": "left dog"}]}], protocol=2))
    assert safe_pickle.load_plain_pickle(good)[0]["sentences"][0]["sent"] == "left dog"
