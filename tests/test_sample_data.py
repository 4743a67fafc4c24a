"""Tests for pipeline.sample_data: the synthetic competition-format CSVs used by smoke runs and demos."""

from __future__ import annotations

import collections
import csv
import random
import re

import pytest

from pipeline import sample_data
from pipeline.sample_data import generate_dialogues, write_sample_data

PII_MASKS = {
    "#PhoneNumber#",
    "#Address#",
    "#DateOfBirth#",
    "#PassportNumber#",
    "#SSN#",
    "#CardNumber#",
    "#CarNumber#",
    "#Email#",
}
TURN_RE = re.compile(r"^#Person[12]#: \S")
MASK_RE = re.compile(r"#[A-Za-z]+\d*#")
# Particles and suffixes that attach to a slot value in one place but not the other ("제주" vs "제주행").
PARTICLES = sorted(
    [
        "에서",
        "에게",
        "으로",
        "까지",
        "이고",
        "로",
        "을",
        "를",
        "이",
        "가",
        "은",
        "는",
        "과",
        "와",
        "의",
        "에",
        "도",
        "행",
    ],
    key=len,
    reverse=True,
)


@pytest.fixture(scope="module")
def train_rows() -> list[dict[str, str]]:
    return generate_dialogues(1200, seed=0, split="train")


def _read(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_write_sample_data_files_headers_and_counts(tmp_path):
    out_dir = tmp_path / "nested" / "data"  # must be created, parents included
    paths = write_sample_data(out_dir, n_train=30, n_dev=7, n_test=5, seed=3)

    assert set(paths) == {"train", "dev", "test"}
    assert paths == {split: out_dir / f"{split}.csv" for split in ("train", "dev", "test")}
    expected = {"train": 30, "dev": 7, "test": 5}
    for split, path in paths.items():
        header, rows = _read(path)
        columns = ["fname", "dialogue"] if split == "test" else ["fname", "dialogue", "summary", "topic"]
        assert header == columns
        assert len(rows) == expected[split]
    # Only the three files: no temporary file may be left behind by the atomic write.
    assert sorted(p.name for p in out_dir.iterdir()) == ["dev.csv", "test.csv", "train.csv"]


def test_csv_round_trip_keeps_multiline_dialogues(tmp_path):
    paths = write_sample_data(tmp_path, n_train=40, n_dev=10, n_test=10, seed=1)
    for split, n in (("train", 40), ("dev", 10)):
        _, rows = _read(paths[split])
        assert rows == generate_dialogues(n, seed=1, split=split)
    _, test_rows = _read(paths["test"])
    expected = [{"fname": r["fname"], "dialogue": r["dialogue"]} for r in generate_dialogues(10, seed=1, split="test")]
    assert test_rows == expected
    assert all("\n" in row["dialogue"] for row in test_rows)


def test_test_csv_has_no_summary_column(tmp_path):
    paths = write_sample_data(tmp_path, n_train=1, n_dev=1, n_test=3)
    header, rows = _read(paths["test"])
    assert "summary" not in header and "topic" not in header
    assert all(set(row) == {"fname", "dialogue"} for row in rows)


def test_fnames_unique_and_prefixed_by_split():
    for split in ("train", "dev", "test"):
        rows = generate_dialogues(300, seed=0, split=split)
        fnames = [row["fname"] for row in rows]
        assert fnames == [f"{split}_{i}" for i in range(300)]
        assert len(set(fnames)) == len(fnames)


def test_every_dialogue_line_is_a_person_turn(train_rows):
    for row in train_rows:
        lines = row["dialogue"].split("\n")
        assert 3 <= len(lines) <= 6, row
        assert lines[0].startswith("#Person1#: "), row  # the competition data always opens with Person1
        for line in lines:
            assert TURN_RE.match(line), line
        # Both speakers take part, and no cell ends with stray whitespace or empty turns.
        assert {line[:9] for line in lines} == {"#Person1#", "#Person2#"}
        assert row["dialogue"] == row["dialogue"].strip()


def test_rows_have_text_and_known_topics(train_rows):
    topics = collections.Counter(row["topic"] for row in train_rows)
    assert len(topics) == len(sample_data._SCENARIOS)
    # Scenarios are drawn uniformly; none should be starved in 1,200 rows (expected ~100 each).
    assert min(topics.values()) >= 50
    for row in train_rows:
        assert row["summary"].endswith("다.") and row["topic"]
        assert "{" not in row["dialogue"] + row["summary"], "unfilled template slot"


def test_deterministic_for_a_seed():
    assert generate_dialogues(50, seed=7) == generate_dialogues(50, seed=7)
    assert generate_dialogues(50, seed=7) != generate_dialogues(50, seed=8)
    # A prefix of a longer run is the same data: n does not change earlier rows.
    assert generate_dialogues(20, seed=7) == generate_dialogues(50, seed=7)[:20]


def test_written_files_deterministic(tmp_path):
    first = write_sample_data(tmp_path / "a", n_train=20, n_dev=5, n_test=5, seed=11)
    second = write_sample_data(tmp_path / "b", n_train=20, n_dev=5, n_test=5, seed=11)
    other = write_sample_data(tmp_path / "c", n_train=20, n_dev=5, n_test=5, seed=12)
    for split in ("train", "dev", "test"):
        assert first[split].read_bytes() == second[split].read_bytes()
        assert first[split].read_bytes() != other[split].read_bytes()


def test_splits_are_not_copies_of_train():
    train = [row["dialogue"] for row in generate_dialogues(200, seed=0, split="train")]
    dev = [row["dialogue"] for row in generate_dialogues(200, seed=0, split="dev")]
    test = [row["dialogue"] for row in generate_dialogues(200, seed=0, split="test")]
    assert dev != train[: len(dev)] and test != dev
    # Same distribution, so chance collisions are allowed, but most rows must be new.
    assert len(set(dev) - set(train)) >= 150


def test_dialogues_are_varied_and_summaries_a_function_of_dialogue(train_rows):
    assert len({row["dialogue"] for row in train_rows}) >= 0.9 * len(train_rows)
    assert len({row["summary"] for row in train_rows}) >= 0.5 * len(train_rows)
    summary_of = {}
    for row in train_rows:
        # Identical dialogues must never get different summaries, or the target would be unlearnable noise.
        assert summary_of.setdefault(row["dialogue"], row["summary"]) == row["summary"]


def test_summary_numbers_and_masks_come_from_dialogue(train_rows):
    for row in train_rows:
        summary = row["summary"].replace("#Person1#", "").replace("#Person2#", "")
        dialogue = row["dialogue"].replace("#Person1#", "").replace("#Person2#", "")
        assert set(re.findall(r"\d+", summary)) <= set(re.findall(r"\d+", dialogue)), row
        assert set(MASK_RE.findall(summary)) <= set(MASK_RE.findall(dialogue)), row


def _words(text: str) -> list[str]:
    return [word.strip(".,?") for word in text.split() if "#" not in word]


def _grounded(word: str, dialogue: str) -> bool:
    stems = {word} | {word[: -len(p)] for p in PARTICLES if word.endswith(p) and len(word) > len(p)}
    return any(stem in dialogue for stem in stems)


def test_summary_slot_words_come_from_own_dialogue(train_rows):
    """The words that vary between summaries of a topic (the slots) must be read off the dialogue.

    Template words are those in most summaries of a topic; the rest are slot words. Each summary must have
    some, most must occur in its own dialogue, and far fewer in another dialogue of the same topic, which
    shows the summary depends on the dialogue's content rather than just its topic.
    """
    by_topic = collections.defaultdict(list)
    for row in train_rows:
        by_topic[row["topic"]].append(row)
    template_words = {}
    for topic, rows in by_topic.items():
        counts = collections.Counter(word for row in rows for word in set(_words(row["summary"])))
        template_words[topic] = {word for word, k in counts.items() if k > len(rows) / 2}

    rng = random.Random(0)
    own, other = [], []
    for row in train_rows:
        slots = [word for word in _words(row["summary"]) if word not in template_words[row["topic"]]]
        assert slots, row
        hits = [_grounded(word, row["dialogue"]) for word in slots]
        assert any(hits), row
        own.append(sum(hits) / len(slots))
        foreign = rng.choice([r for r in by_topic[row["topic"]] if r["dialogue"] != row["dialogue"]])
        other.append(sum(_grounded(word, foreign["dialogue"]) for word in slots) / len(slots))
    own_rate, other_rate = sum(own) / len(own), sum(other) / len(other)
    assert own_rate >= 0.85, own_rate
    assert own_rate - other_rate >= 0.5, (own_rate, other_rate)


def test_pii_masks_appear(train_rows):
    seen = set()
    for row in train_rows:
        seen |= set(MASK_RE.findall(row["dialogue"]))
    assert PII_MASKS <= seen
    # Masks are never broken by a particle glued inside them.
    assert seen - {"#Person1#", "#Person2#"} <= PII_MASKS


def test_dialogues_stay_short(train_rows):
    # The tiny smoke model uses a 128-token encoder; whitespace words are a cheap upper-bound proxy.
    assert max(len(row["dialogue"].split()) for row in train_rows) <= 45
    assert max(len(row["summary"].split()) for row in train_rows) <= 25


def test_particles_follow_the_final_consonant():
    fill = sample_data._fill
    assert fill("{x:을}", x="운동화") == "운동화를"
    assert fill("{x:을}", x="가죽 지갑") == "가죽 지갑을"
    assert fill("{x:으로}", x="룸") == "룸으로"
    assert fill("{x:으로}", x="호텔") == "호텔로"  # ㄹ takes 로
    assert fill("{x:으로}", x="오후 3시") == "오후 3시로"
    assert fill("{x:이}", x=3) == "3이" and fill("{x:이}", x=2) == "2가"
    assert fill("{p:은} {q:은}", p="#Person1#", q="#Person2#") == "#Person1#은 #Person2#는"
    assert fill("{d:에}", d="내일") == "내일" and fill("{d:에}", d="토요일") == "토요일에"


@pytest.mark.parametrize("name", ["n_train", "n_dev", "n_test"])
@pytest.mark.parametrize("value", [0, -1])
def test_counts_below_one_raise_naming_the_argument(tmp_path, name, value):
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=name):
        write_sample_data(out_dir, **{name: value})
    assert not out_dir.exists()  # validated before anything is created


def test_generate_dialogues_rejects_negative_n():
    assert generate_dialogues(0) == []
    with pytest.raises(ValueError, match="n must be"):
        generate_dialogues(-1)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    paths = write_sample_data(tmp_path, n_train=5, n_dev=2, n_test=2)
    before = paths["train"].read_bytes()

    def boom(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", boom)
    with pytest.raises(OSError, match="disk full"):
        write_sample_data(tmp_path, n_train=50, n_dev=2, n_test=2, seed=9)
    assert paths["train"].read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.csv", "test.csv", "train.csv"]
