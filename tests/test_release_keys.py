"""Our models against the official classes' state-dict keys, in both directions (meta tensors only).

tests/data/official_keys/*.json.gz were written by tools/parity/dump_official_keys.py from the official
EVF-SAM classes (hustvl/EVF-SAM) themselves: an independent reference, not our reading of the code.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from evf.model import EVFSAM
from evf.release import build_without_weights, official_to_ours, ours_to_official

FIXTURES = sorted((Path(__file__).parent / "data" / "official_keys").glob("*.json.gz"))
# Parameter counts (state-dict values minus persistent buffers) of the released models (spec §9).
PARAMETERS = {"EvfSamModel-huge-large": 1_315_105_072, "EvfSam2Model-large-large": 898_444_594}


def official_keys(fixture: Path) -> dict:
    with gzip.open(fixture, "rt") as f:
        return json.load(f)


def our_model(record: dict) -> EVFSAM:
    config = {"architectures": [record["class"]], "sam_scale": record["sam_scale"],
              "mm_extractor_scale": record["mm_extractor_scale"]}
    return build_without_weights(EVFSAM, config)


def test_every_official_class_and_scale_has_a_fixture():
    names = {f.name.removesuffix(".json.gz") for f in FIXTURES}
    assert names == {"EvfSamModel-huge-large", "EvfSamModel-huge-base", "EvfSam2Model-large-large",
                     "EvfSam2Model-tiny-large", "EvfEffiSamModel-small-large", "EvfEffiSamModel-tiny-large"}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name.removesuffix(".json.gz"))
def test_official_keys_map_onto_exactly_our_state_dict_and_back(fixture):
    record = official_keys(fixture)
    theirs = {name: (tuple(shape), dtype) for name, shape, dtype in record["keys"]}
    model = our_model(record)
    ours = {name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in model.state_dict().items()}

    mapped_in = {official_to_ours(name): spec for name, spec in theirs.items()}
    assert len(mapped_in) == len(theirs)  # no two official keys land on one of ours
    assert sorted(set(mapped_in) - set(ours)) == []  # official keys we do not have
    assert sorted(set(ours) - set(mapped_in)) == []  # keys of ours no official key maps onto
    assert {k: v for k, v in mapped_in.items() if ours[k] != v} == {}
    assert mapped_in == ours

    mapped_out = {ours_to_official(name): spec for name, spec in ours.items()}
    assert len(mapped_out) == len(ours)
    assert sorted(set(mapped_out) - set(theirs)) == []
    assert sorted(set(theirs) - set(mapped_out)) == []
    assert mapped_out == theirs

    assert sum(t.numel() for t in model.state_dict().values()) == record["numel"]
    name = fixture.name.removesuffix(".json.gz")
    if name in PARAMETERS:
        assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
