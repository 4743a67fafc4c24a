"""Competition CSV validation (each bad file names file, row and column), tokenization and the prepared-data cache."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.data import Columns, DataError, prepare_datasets, read_competition_csv, tokenize_table

HEADER = "fname,dialogue,summary,topic\n"


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A real scratch tokenizer trained on sample data (under a second)."""
    from pipeline.modeling import train_scratch_tokenizer
    from pipeline.sample_data import write_sample_data

    directory = tmp_path_factory.mktemp("tok")
    paths = write_sample_data(directory, n_train=200, n_dev=10, n_test=10)
    return train_scratch_tokenizer(paths["train"], 500, ["#Person1#", "#Person2#", "#PhoneNumber#", "#Address#"])


def test_reads_competition_file_with_multiline_dialogues(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fname", "dialogue", "summary", "topic"])
        writer.writerow(
            ["train_0", "#Person1#: 안녕하세요.\n#Person2#: 네, 안녕하세요.", "두 사람이 인사한다.", "인사"]
        )
    table = read_competition_csv(path, require_summary=True)
    assert table.fnames == ["train_0"]
    assert table.dialogues[0].count("\n") == 1  # turn structure kept
    assert table.references == [["두 사람이 인사한다."]]
    assert table.topics == ["인사"]


def test_multi_reference_columns_are_read_in_numeric_order(tmp_path):
    path = write(tmp_path / "dev.csv", "fname,dialogue,summary2,summary1,summary10\nd0,대화,둘,하나,열\n")
    table = read_competition_csv(path, require_summary=True)
    assert table.references == [["하나", "둘", "열"]]


def test_test_file_without_summary_is_unlabeled(tmp_path):
    table = read_competition_csv(write(tmp_path / "test.csv", "fname,dialogue\nt0,대화\n"))
    assert table.references is None


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path / "bom.csv", "\ufeff" + HEADER + "a,대화,요약,주제\n")
    assert read_competition_csv(path, require_summary=True).fnames == ["a"]


# ---- bad files: each error names the file and, where there is one, the row and column ----


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_competition_csv(tmp_path / "missing.csv")


def test_empty_file(tmp_path):
    path = write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        read_competition_csv(path)


def test_header_without_rows(tmp_path):
    path = write(tmp_path / "header.csv", HEADER)
    with pytest.raises(DataError, match=r"header\.csv: the file has a header but no rows"):
        read_competition_csv(path)


def test_missing_dialogue_column(tmp_path):
    path = write(tmp_path / "nodialogue.csv", "fname,text,summary\na,대화,요약\n")
    with pytest.raises(DataError, match=r"nodialogue\.csv: missing column\(s\) 'dialogue'.*'text'"):
        read_competition_csv(path)


def test_missing_summary_column_in_training_file(tmp_path):
    path = write(tmp_path / "train.csv", "fname,dialogue\na,대화\n")
    with pytest.raises(DataError, match=r"train\.csv: missing column\(s\) 'summary'"):
        read_competition_csv(path, require_summary=True)


def test_empty_dialogue_names_row_fname_and_column(tmp_path):
    path = write(tmp_path / "train.csv", HEADER + "a,대화,요약,t\nb,  ,요약,t\n")
    with pytest.raises(DataError, match=r"train\.csv, row 2 \(fname 'b'\), column 'dialogue': empty dialogue"):
        read_competition_csv(path, require_summary=True)


def test_empty_summary_in_training_file(tmp_path):
    path = write(tmp_path / "train.csv", HEADER + "a,대화,,t\n")
    with pytest.raises(DataError, match=r"row 1 \(fname 'a'\), column 'summary': empty summary"):
        read_competition_csv(path, require_summary=True)


def test_duplicate_fname_names_both_rows(tmp_path):
    path = write(tmp_path / "train.csv", HEADER + "a,대화,요약,t\nb,대화,요약,t\na,대화,요약,t\n")
    with pytest.raises(DataError, match=r"row 3, column 'fname': duplicate fname 'a' \(first at row 1\)"):
        read_competition_csv(path, require_summary=True)


def test_undecodable_bytes_name_line_and_suggest_iconv(tmp_path):
    path = write(tmp_path / "cp949.csv", (HEADER + "a,대화,요약,t\n").encode("cp949"))
    with pytest.raises(DataError, match=r"cp949\.csv: line 2 .*not valid UTF-8.*iconv -f cp949"):
        read_competition_csv(path)


def test_row_with_wrong_field_count(tmp_path):
    path = write(tmp_path / "train.csv", HEADER + "a,대화,요약,t\nb,대화, 쉼표,요약,t\n")
    with pytest.raises(DataError, match=r"train\.csv, row 2: 5 fields but the header has 4"):
        read_competition_csv(path, require_summary=True)


def test_custom_column_names(tmp_path):
    path = write(tmp_path / "custom.csv", "id,text,target\na,대화,요약\n")
    table = read_competition_csv(path, Columns(id="id", dialogue="text", summary="target"), require_summary=True)
    assert table.references == [["요약"]]


# ---- tokenization ----


def test_tokenize_truncates_keeps_eos_and_counts(tokenizer, tmp_path):
    long_dialogue = "#Person1#: " + " ".join(["회의실에서 만나요"] * 60)
    path = write(tmp_path / "train.csv", HEADER + f'a,"{long_dialogue}",짧은 요약,t\nb,#Person1#: 안녕,인사,t\n')
    table = read_competition_csv(path, require_summary=True)
    columns, stats = tokenize_table(table, tokenizer, prefix="", encoder_max_len=32, decoder_max_len=8)
    assert stats == {"rows": 2, "truncated_dialogues": 1, "truncated_summaries": 0}
    assert len(columns["input_ids"][0]) == 32
    assert columns["input_ids"][0][-1] == tokenizer.eos_token_id  # truncation keeps </s>
    assert columns["length"] == [len(ids) for ids in columns["input_ids"]]
    assert columns["references"] == [["짧은 요약"], ["인사"]]


def test_prefix_is_prepended(tokenizer, tmp_path):
    path = write(tmp_path / "test.csv", "fname,dialogue\na,#Person1#: 안녕\n")
    table = read_competition_csv(path)
    columns, _ = tokenize_table(table, tokenizer, prefix="summarize: ", encoder_max_len=64, decoder_max_len=8)
    assert tokenizer.decode(columns["input_ids"][0], skip_special_tokens=True).startswith("summarize: #Person1#")
    assert "labels" not in columns  # unlabeled split


def test_collator_pads_labels_with_minus_100(tokenizer, tmp_path):
    from transformers import DataCollatorForSeq2Seq

    path = write(
        tmp_path / "train.csv",
        HEADER + "a,#Person1#: 안녕,짧다,t\nb,#Person1#: 안녕,이것은 훨씬 더 긴 요약 문장이다,t\n",
    )
    columns, _ = tokenize_table(read_competition_csv(path, require_summary=True), tokenizer, "", 64, 32)
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(
        [{"input_ids": columns["input_ids"][i], "labels": columns["labels"][i]} for i in range(2)]
    )
    short = len(columns["labels"][0])
    assert (batch["labels"][0, short:] == -100).all() and (batch["labels"][0, :short] != -100).all()


def test_prepare_datasets_second_call_is_cache_hit(tokenizer, sample_dir, tmp_path):
    files = {"train": sample_dir / "train.csv", "validation": sample_dir / "dev.csv", "test": sample_dir / "test.csv"}
    kwargs = dict(artifact_root=tmp_path, prefix="", encoder_max_len=64, decoder_max_len=32)
    first = prepare_datasets(files, tokenizer, **kwargs)
    second = prepare_datasets(files, tokenizer, **kwargs)
    assert not first.cache_hit and second.cache_hit
    assert first.directory == second.directory and first.directory.parent == tmp_path / "datasets"
    assert second.datasets["train"]["input_ids"] == first.datasets["train"]["input_ids"]
    assert set(second.datasets) == {"train", "validation", "test"}
    lengths = second.datasets["validation"]["length"]
    assert lengths == sorted(lengths, reverse=True)  # evaluation batches are length-sorted
    # Any change to preprocessing or to the input bytes is a new fingerprint.
    third = prepare_datasets(files, tokenizer, **{**kwargs, "encoder_max_len": 48})
    assert not third.cache_hit and third.fingerprint != first.fingerprint
    assert not list(tmp_path.glob("datasets/.*tmp*"))  # no temporary directory left behind
