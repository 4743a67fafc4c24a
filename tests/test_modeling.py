"""Model and tokenizer loading: scratch build, marker tokens, local directories, and the no-hub error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.modeling import (
    ModelLoadError,
    add_marker_tokens,
    load_model_and_tokenizer,
    load_pretrained,
    load_scratch_tokenizer,
)

MARKERS = ["#Person1#", "#Person2#", "#PhoneNumber#", "#Address#", "#PassportNumber#"]


def test_markers_are_never_split_and_survive_decoding(sample_dir, tmp_path):
    tokenizer = load_scratch_tokenizer(tmp_path, sample_dir / "train.csv", 500, MARKERS)
    text = "#Person1#: 제 번호는 #PhoneNumber#이고 주소는 #Address#예요.\n#Person2#: 여권 #PassportNumber# 확인했어요."
    tokens = tokenizer.tokenize(text)
    for marker in ["#Person1#", "#Person2#", "#PhoneNumber#", "#Address#", "#PassportNumber#"]:
        assert marker in tokens
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # markers and the newline survive


def test_scratch_tokenizer_is_cached_per_training_file(sample_dir, tmp_path):
    first = load_scratch_tokenizer(tmp_path, sample_dir / "train.csv", 500, MARKERS)
    cached = list((tmp_path / "tokenizers").iterdir())
    second = load_scratch_tokenizer(tmp_path, sample_dir / "train.csv", 500, MARKERS)
    assert len(cached) == 1 and list((tmp_path / "tokenizers").iterdir()) == cached
    assert first.get_vocab() == second.get_vocab()


def test_local_model_directory_gets_markers_and_resized_embeddings(micro_config, tmp_path):
    tokenizer, model = load_model_and_tokenizer(micro_config, tmp_path, micro_config["data"]["train_path"])
    model.save_pretrained(tmp_path / "local")
    tokenizer.save_pretrained(tmp_path / "local")
    micro_config["model"]["checkpoint"] = str(tmp_path / "local")
    micro_config["tokenizer"]["special_tokens"] = [*micro_config["tokenizer"]["special_tokens"], "#NewMask#"]
    loaded_tokenizer, loaded_model = load_model_and_tokenizer(
        micro_config, tmp_path, micro_config["data"]["train_path"]
    )
    assert len(loaded_tokenizer) == len(tokenizer) + 1
    assert loaded_model.get_input_embeddings().num_embeddings == len(loaded_tokenizer)
    assert loaded_tokenizer.tokenize("#NewMask#") == ["#NewMask#"]
    assert add_marker_tokens(loaded_tokenizer, ["#NewMask#"]) == 0  # adding twice adds nothing


def test_directory_without_config_json_is_a_clear_error(tmp_path):
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ModelLoadError, match="without config.json.*save_pretrained"):
        load_pretrained(str(tmp_path / "not_a_model"))


def test_unreachable_hub_says_how_to_use_local_dir_or_scratch(tmp_path):
    # HF_HUB_OFFLINE makes the hub unreachable at once instead of after retries; it is read at import.
    code = (
        "from pipeline.modeling import load_pretrained\n"
        "try:\n    load_pretrained('gogamza/kobart-base-v2')\n"
        "except RuntimeError as error:\n    print(error)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "gogamza/kobart-base-v2" in result.stdout
    assert "local directory" in result.stdout and "model.checkpoint: scratch" in result.stdout


def test_pre_layer_norm_scratch_model_round_trips_and_starts_decoding_like_bart(micro_config, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    micro_config["model"]["scratch"]["pre_layer_norm"] = True
    tokenizer, model = load_model_and_tokenizer(micro_config, tmp_path, micro_config["data"]["train_path"])
    assert model.config.model_type == "mbart" and model.config.decoder_start_token_id == tokenizer.eos_token_id
    labels = tokenizer(text_target=["두 사람이 인사한다."], return_tensors="pt")["input_ids"]
    # mBART moves the final </s> to the front: the same decoder inputs BART builds from </s>.
    shifted = model.prepare_decoder_input_ids_from_labels(labels=labels)
    assert shifted[0].tolist() == [tokenizer.eos_token_id, *labels[0, :-1].tolist()]
    model.save_pretrained(tmp_path / "saved")
    assert type(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "saved")) is type(model)
