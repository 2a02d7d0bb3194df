"""The 4M-21 text serializations: each parses the strings the official transforms wrote (recorded in the 4M-21
fixture) and writes them back word for word; and round-trips what the labelers produce."""
from __future__ import annotations

import json

import pytest

from fourm.data import serialize as S


@pytest.fixture(scope="module")
def official_strings() -> dict:
    from safetensors import safe_open

    from fourm.models.parity import default_fixture_dir_4m21

    path = default_fixture_dir_4m21() / "tiny_4m21_io.safetensors"
    if not path.exists():
        pytest.skip(f"4M-21 official fixture not found at {path.parent} (shared/fixtures/official_4m21 beside the repo)")
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["raw_text_inputs"])


def test_official_strings_round_trip(official_strings):
    for text in official_strings["color_palette"]:
        assert S.palette_to_text(S.palette_from_text(text)) == text
    assert S.palette_from_text(official_strings["color_palette"][0]) == [[8, 24, 67]]
    for chunks in official_strings["metadata"]:
        values = S.metadata_from_chunks(chunks)
        assert len(values) == len(chunks) and S.metadata_to_chunks(values) == chunks
    for text in official_strings["human_poses"]:
        people = S.poses_from_text(text)
        assert S.poses_to_text(people) == text.strip()
    person = S.poses_from_text(official_strings["human_poses"][0])[0]
    assert person.box == [180, 220, 470, 949] and person.order == ("global", "shape", "camera", "pose")
    assert person.pose == [236, 512 + 125, 512 + 388, 512 + 34, 140, 512 + 385, 512 + 330, 37]
    for text in official_strings["sam_instance"]:
        points = S.sam_from_text(text)
        assert S.sam_to_text(points) == text
    first = S.sam_from_text(official_strings["sam_instance"][0])
    assert len(first) == 7 and first[0].point == (140, 144) and first[0].instances[0][0] == [68, 16, 100, 78]
    assert [len(p.instances) for p in first] == [1, 1, 1, 0, 0, 0, 1]


def test_round_trips_of_our_own_values():
    palette = [S.lab_bins((53.2, 80.1, 67.2)), S.lab_bins((100.0, -0.0, 0.0)), S.lab_bins((0.0, -128.0, 127.0))]
    assert palette == [[53, 208, 195], [100, 128, 128], [0, 0, 255]]
    assert S.palette_from_text(S.palette_to_text(palette)) == palette
    meta = {"brightness": 412, "entropy": 77, "walkability": 0, "caption_length": 999}
    assert S.metadata_from_chunks(S.metadata_to_chunks(meta)) == meta
    people = [S.HumanPose([1, 2, 3, 4], list(range(9)), list(range(10)), [5, 6, 7], [0, 511, 512, 1023, 1024, 2047, 3, 4],
                          ("pose", "camera", "global", "shape"))]
    assert S.poses_from_text(S.poses_to_text(people)) == people and S.poses_to_text([]) == "none"
    points = [S.PointInstances((10, 20), []), S.PointInstances((5, 6), [([1, 2, 3, 4], list(range(1000, 1016)))] * 2)]
    assert S.sam_from_text(S.sam_to_text(points)) == points


def test_malformed_strings_name_the_modality_and_the_word():
    with pytest.raises(S.SerializationError, match=r"color_palette: .* 3 x n"):
        S.palette_from_text("v1=2 v0=1 v0=2 v0=3")
    with pytest.raises(S.SerializationError, match=r"metadata: unknown type 'height'"):
        S.metadata_to_chunks({"height": 3})
    with pytest.raises(S.SerializationError, match=r"human_poses: expected 'human' at word 0, got 'person'"):
        S.poses_from_text("person v0=1")
    with pytest.raises(S.SerializationError, match=r"v0=1000: a bin must lie in 0..999"):
        S.palette_to_text([[1000, 0, 0]])
