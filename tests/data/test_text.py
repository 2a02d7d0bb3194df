"""Text tokenizer (official special-token layout) and boxes-as-text round trip."""
import json
from pathlib import Path

import pytest

from fourm.data.text import (
    COCO_CLASSES,
    boxes_to_chunks,
    boxes_to_text,
    load_tokenizer,
    special_ids,
    special_tokens,
    text_to_boxes,
    train_wordpiece,
)

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "official_4m" / "text_tokenizer_4m_wordpiece_30k.json"

CAPTIONS = [
    "a small red bicycle leaning against a white wall",
    "two dogs running on a sandy beach at sunset",
    "a person holding a teddy bear next to a wine glass",
    "three zebras grazing in tall grass",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "wordpiece.json"
    train_wordpiece(CAPTIONS * 5, vocab_size=4400, out_path=path)
    return path


def test_official_tokenizer_loads_and_has_4m_specials():
    tok = load_tokenizer(OFFICIAL)
    ids = special_ids(tok)
    assert (ids.pad, ids.unk, ids.sos, ids.eos) == (0, 1, 2, 3)
    assert ids.sentinels[:3] == (4, 5, 6) and len(ids.sentinels) == 200
    assert tok.token_to_id("v0=0") == 204 and tok.token_to_id("v3=999") == 4203
    assert tok.token_to_id("teddy bear") == 4204 + sorted(COCO_CLASSES).index("teddy bear")


def test_trained_tokenizer_has_official_special_ids(trained):
    ours, official = load_tokenizer(trained), load_tokenizer(OFFICIAL)
    ov = official.get_vocab()
    specials = {t: i for t, i in ov.items() if i < 4284}
    assert len(specials) == 4284
    mv = ours.get_vocab()
    assert {t: mv[t] for t in specials} == specials
    # same added-token flags (single_word / normalized / special) as the official JSON
    assert json.loads(trained.read_text())["added_tokens"] == json.loads(OFFICIAL.read_text())["added_tokens"]


def test_trained_tokenizer_encodes_words_and_specials(trained):
    tok = load_tokenizer(trained)
    enc = tok.encode("A Teddy Bear [S_1] v0=12 dogs")
    assert enc.tokens == ["a", "teddy bear", "[S_1]", "v0=12", "dogs"]
    assert tok.token_to_id("[UNK]") not in enc.ids
    assert tok.get_vocab_size() > 4284


def test_train_refuses_tiny_vocab_and_overwrite(trained):
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_wordpiece(CAPTIONS, vocab_size=100)
    with pytest.raises(FileExistsError, match=str(trained)):
        train_wordpiece(CAPTIONS, vocab_size=4400, out_path=trained)


def test_load_tokenizer_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(bad)


def test_boxes_text_format_matches_official_style():
    chunks = boxes_to_chunks([(10, 20, 100, 200, "teddy bear"), (0, 0, 50, 25, "person")], image_size=(100, 200))
    # sorted by distance of (xmin, ymin) to the origin; x / width, y / height; round(v * 999)
    assert chunks == ["v0=0 v1=0 v2=250 v3=250 person", "v0=50 v1=200 v2=500 v3=999 teddy bear"]
    assert boxes_to_text([(0, 0, 50, 25, "person")], (100, 200)) == chunks[0]


def test_boxes_round_trip_within_one_bin():
    boxes = [(3.0, 7.5, 60.2, 44.0, "dog"), (30.0, 1.0, 63.0, 47.0, "fire hydrant"), (12.0, 40.0, 20.0, 45.5, "person")]
    size = (48, 64)  # height, width
    for bins in (1000, 100):
        back = text_to_boxes(boxes_to_text(boxes, size, bins=bins), size, bins=bins)
        assert sorted(b[4] for b in back) == sorted(b[4] for b in boxes)
        by_cls = {b[4]: b for b in back}
        for b in boxes:
            got = by_cls[b[4]]
            for v, g, s in zip(b[:4], got[:4], (64, 48, 64, 48)):
                assert abs(v - g) <= 0.5 * s / (bins - 1) + 1e-9


def test_boxes_round_trip_through_official_tokenizer():
    tok = load_tokenizer(OFFICIAL)
    text = boxes_to_text([(3, 4, 30, 40, "wine glass"), (10, 10, 20, 20, "dog")], 64)
    ids = tok.encode(text + " [EOS]").ids
    assert tok.token_to_id("[UNK]") not in ids and len(ids) == 11  # 2 x (4 coords + 1 class) + EOS
    assert text_to_boxes(tok.decode(ids, skip_special_tokens=False), 64) == text_to_boxes(text, 64)


def test_text_to_boxes_skips_broken_boxes():
    text = "[S_1] v0=1 v1=2 v2=3 v3=4 cat v0=5 v2=6 v3=7 dog v0=9 v1=9 v2=9 v3=9 [EOS]"
    assert text_to_boxes(text, 999 + 1, bins=1000) == [(1.0 * 1000 / 999, 2 * 1000 / 999, 3 * 1000 / 999, 4 * 1000 / 999, "cat")]


def test_training_twice_gives_the_same_ids(tmp_path):
    """HF's trainer gave a different vocabulary in every process (ties broken in hash-map order); ours must not."""
    import glob

    from fourm.data import world

    world.generate(str(tmp_path / "w"), 24, 32, seed=0, split="train")
    captions = [open(p).read() for p in sorted(glob.glob(str(tmp_path / "w" / "train" / "caption" / "*.txt")))]
    runs = [train_wordpiece(captions, vocab_size=6000, class_names=world.CLASSES) for _ in range(4)]
    vocabs = [r.get_vocab() for r in runs]
    assert all(v == vocabs[0] for v in vocabs[1:])
    assert len(vocabs[0]) > len(special_tokens(world.CLASSES))  # words were learned, not only the special tokens
    learned = [t for t, _ in sorted(vocabs[0].items(), key=lambda kv: kv[1])][len(special_tokens(world.CLASSES)):]
    chars = sorted({c for cap in captions for c in cap.lower() if not c.isspace()})
    assert learned[:2 * len(chars)] == chars + [f"##{c}" for c in chars]  # then whole words, most frequent first
    import re

    words = {w for cap in captions for w in re.findall(r"[a-z]+", cap.lower()) if len(w) > 1}
    assert words and words <= set(vocabs[0])  # every word of the captions is one piece (class names: special)
    # the renumbered model still covers every word: no [UNK], and ids map back to the pieces
    enc = runs[0].encode(captions[0])
    assert "[UNK]" not in enc.tokens and [runs[0].id_to_token(i) for i in enc.ids] == enc.tokens
    assert runs[0].decode(enc.ids, skip_special_tokens=False).replace(" ,", ",") == captions[0].strip().lower()
