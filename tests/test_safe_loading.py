"""No unsafe deserialisation in the package: the lint rules that forbid it fire (ruff runs them in .ci/run over
the whole tree), and the loaders refuse pickled code at run time.

Rules (pyproject.toml, ``[tool.ruff.lint]``): ``torch.load`` only in evf/checkpoint.py (weights only);
``pickle`` loads only in evf/safe_pickle.py's restricted unpickler (S301, TID251); ``numpy.load`` only with a
reviewed ``noqa``; ``yaml.load`` only with a safe loader (S506); no ``exec``/``eval`` (S102, S307).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def lint(snippet: str, filename: str = "evf/example.py") -> list[str]:
    """Rule codes ruff reports for ``snippet`` as if it were ``filename`` in this repository, with its config."""
    if shutil.which("ruff") is None and subprocess.run([sys.executable, "-m", "ruff", "--version"],
                                                      capture_output=True, check=False).returncode != 0:
        pytest.skip("ruff is not installed (it is in the dev extras)")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "json",
                             "--stdin-filename", filename, "-"], input=snippet, capture_output=True, text=True,
                            cwd=REPO, check=False)
    import json

    return sorted({d["code"] for d in json.loads(result.stdout)} - {"I001", "F401", "F821"})


UNSAFE = [
    "import torch\ntorch.load('x', weights_only=False)",
    "from torch import load\nload('x')",
    "import pickle\npickle.load(open('x', 'rb'))",
    "import pickle as pk\npk.loads(b'')",
    "from pickle import Unpickler\nclass U(Unpickler): pass",
    "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
    "import yaml\nyaml.load(open('c.yaml'))",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.unsafe_load(text)",
    "exec(source)",
    "import torch\ntorch.save({}, 'x.pt')",
    "import numpy as np\nnp.save('x.npy', a)",
    "import tempfile\ntempfile.mkstemp()",
]


@pytest.mark.parametrize("snippet", UNSAFE)
def test_lint_rules_flag_unsafe_loads_and_non_atomic_saves(snippet):
    assert lint(snippet) != []


@pytest.mark.parametrize("snippet", [
    "import yaml\nyaml.safe_load(text)\nyaml.load(text, Loader=yaml.SafeLoader)",
    "import pickle\npickle.dumps({})  # writing is fine",
    "# torch.load('x') in a comment\ns = 'pickle.load(f)'",
])
def test_lint_rules_accept_safe_code(snippet):
    assert lint(snippet) == []


def test_the_bans_cover_the_package_but_not_test_scratch_files():
    assert lint("import torch\ntorch.load('x')", "datamodules/example.py") == ["TID251"]
    assert lint("import torch\ntorch.load('x')", "tests/example.py") == []


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
