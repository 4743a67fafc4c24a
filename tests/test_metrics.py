"""Tests for pipeline.metrics: Korean-aware ROUGE that matches rouge_score exactly (real Kiwi, no mocks)."""

import random

import pytest
from rouge_score.rouge_scorer import RougeScorer

from pipeline.metrics import (
    MARKER_PATTERN,
    collapse_reason,
    combined_f1,
    compute_rouge,
    compute_rouge_by_rule,
    get_tokenizer,
    prediction_diversity,
    rouge_per_example,
)

KEYS = ("rouge1", "rouge2", "rougeL")
KOREAN = "#Person1#은 #Person2#에게 내일 회의 일정을 알려주고, #Person2#는 참석하겠다고 답한다."

# Varied (reference, prediction) pairs: Korean, English, mixed, markers, repeats, punctuation, empty sides.
PAIRS = [
    (KOREAN, KOREAN),
    (KOREAN, "#Person2#는 내일 회의에 참석하겠다고 #Person1#에게 말한다."),
    ("#Person1#과 #Person2#는 주말에 함께 영화를 보기로 약속한다.", "#Person1#과 #Person2#는 영화를 본다."),
    ("#Person2#는 새 아파트 주소 #Address#를 알려준다.", "#Person1#은 #Address#로 이사한다."),
    ("#Person1#의 전화번호는 #PhoneNumber#입니다.", "#Person1#의 전화번호는 #PhoneNumber#이다."),
    ("#Person1#은 여권번호 #PassportNumber#를 확인한다.", "#Person2#는 여권을 잃어버렸다."),
    ("고객은 환불을 요청하고 직원은 영수증을 달라고 한다.", "직원은 영수증을 요청한다."),
    ("의사는 #Person1#에게 하루 세 번 약을 먹으라고 한다.", "#Person1#은 약을 먹는다."),
    ("두 사람은 시험 결과를 걱정한다.", "그들은 날씨 이야기를 한다."),
    ("네 네 네 좋아요 좋아요", "좋아요 네"),
    ("가 나 다 라 마 바 사", "사 바 마 라 다 나 가"),
    ("#Person1#: 안녕하세요! #Person2#: 반갑습니다.", "안녕하세요 반갑습니다"),
    ("The quick brown fox jumps over the lazy dog.", "A quick brown dog jumps over the lazy fox!"),
    ("#Person1# asks #Person2# for the phone number #PhoneNumber#.", "#Person2# gives #Person1# a phone number."),
    ("Hello WORLD hello world", "hello world"),
    ("It costs 25 dollars, not 30.", "The price is 25 dollars."),
    ("회의는 3시 30분에 시작합니다.", "회의는 3시에 시작한다."),
    ("#Person1#은 KTX 표를 예매한다.", "#Person1# books a KTX ticket."),
    ("#Person1##Person2#", "#Person2# #Person1#"),
    ("", "비어 있지 않은 예측"),
    ("비어 있지 않은 참조", ""),
    ("공백만 있는 예측", "   \n\t "),
    ("", ""),
    ("같은 말 같은 말 같은 말", "같은 말"),
    ("ㅋㅋㅋ 진짜 웃기다 ㅎㅎ", "진짜 웃기다"),
    ("#Person2#는 #CardNumber#로 결제하고 #Email#로 영수증을 받는다.", "#Person2#는 카드로 결제한다."),
    ("#Person1#은 생년월일 #DateOfBirth#와 #SSN#을 알려준다.", "#Person1#은 개인정보를 알려준다."),
    ("they walked to the station; then, they took the train home.", "they took the train home"),
    ("서울에서 부산까지 기차로 세 시간 걸린다.", "부산까지 세 시간이 걸린다고 한다."),
    ("#Person1#는 #CarNumber# 차량을 주차장에 세웠다.", "#Person1#은 차를 주차했다."),
]


def _naive_scores(tokenizer_name: str, reference: str, prediction: str) -> dict[str, float]:
    scorer = RougeScorer(list(KEYS), tokenizer=get_tokenizer(tokenizer_name))
    return {key: score.fmeasure for key, score in scorer.score(reference, prediction).items()}


@pytest.mark.parametrize("name", ["kiwi", "whitespace"])
def test_identical_korean_summaries_score_one(name):
    scores = compute_rouge([KOREAN], [KOREAN], tokenizer=name)
    assert scores == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rouge_combined_f1": 1.0})


def test_default_tokenizer_deletes_hangul_so_identical_korean_scores_zero():
    # Why "default" is never the default: rouge_score keeps only [a-z0-9], so Hangul vanishes.
    assert get_tokenizer("default").tokenize("회의 일정을 알려준다") == []
    scores = compute_rouge(["회의 일정을 알려준다"], ["회의 일정을 알려준다"], tokenizer="default")
    assert scores == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rouge_combined_f1": 0.0}


@pytest.mark.parametrize("name", ["kiwi", "whitespace"])
def test_markers_are_single_tokens(name):
    tokens = get_tokenizer(name).tokenize("#Person1#의 전화번호는 #PhoneNumber#입니다")
    assert "#Person1#" in tokens
    assert "#PhoneNumber#" in tokens
    assert "#Person1" not in tokens and "#" not in tokens


def test_kiwi_tokens_are_morphemes_with_lowercased_latin():
    tokens = get_tokenizer("kiwi").tokenize("#Person1#의 전화번호는 Hello입니다")
    assert tokens[:4] == ["#Person1#", "의", "전화번호", "는"]
    assert "hello" in tokens


def test_marker_pattern():
    markers = ["#Person1#", "#PhoneNumber#", "#Address#", "#PassportNumber#", "#Date_Of_Birth#"]
    assert MARKER_PATTERN.findall("".join(markers) + " # 1 # #Person 1#") == markers


def test_tokenize_many_matches_tokenize():
    kiwi = get_tokenizer("kiwi")
    texts = [reference for reference, _ in PAIRS[:8]] + ["", "  "]
    assert kiwi.tokenize_many(texts) == [kiwi.tokenize(text) for text in texts]


@pytest.mark.parametrize("name", ["kiwi", "whitespace"])
def test_multi_reference_max_takes_best_reference_per_metric(name):
    prediction = "사과 바나나 체리 포도"
    reversed_words = "포도 체리 바나나 사과"  # rouge1 1, rouge2 0, rougeL 1/4
    half_match = "사과 바나나 수박 딸기"  # rouge1 1/2, rouge2 1/3, rougeL 1/2
    maximum = compute_rouge([prediction], [[reversed_words, half_match]], tokenizer=name, multi_reference="max")
    # rouge1 comes from the first reference, rouge2 and rougeL from the second.
    assert maximum == pytest.approx({"rouge1": 1.0, "rouge2": 1 / 3, "rougeL": 0.5, "rouge_combined_f1": 0.61})
    mean = compute_rouge([prediction], [[reversed_words, half_match]], tokenizer=name, multi_reference="mean")
    assert mean == pytest.approx({"rouge1": 0.75, "rouge2": 1 / 6, "rougeL": 0.375, "rouge_combined_f1": 0.43})


def test_single_string_reference_equals_one_element_list():
    predictions = [prediction for _, prediction in PAIRS[:5]]
    references = [reference for reference, _ in PAIRS[:5]]
    assert compute_rouge(predictions, references) == compute_rouge(predictions, [[ref] for ref in references])


def test_combined_formula():
    assert combined_f1(1.0, 0.0, 0.5) == pytest.approx(0.5)
    assert combined_f1(0.4, 0.2, 0.3) == pytest.approx(0.33 * 0.4 + 0.33 * 0.2 + 0.34 * 0.3)
    scores = compute_rouge([prediction for _, prediction in PAIRS], [reference for reference, _ in PAIRS])
    assert scores["rouge_combined_f1"] == combined_f1(scores["rouge1"], scores["rouge2"], scores["rougeL"])


@pytest.mark.parametrize("name", ["kiwi", "whitespace", "default"])
@pytest.mark.parametrize("prediction", ["", "   ", "\n\t"])
def test_empty_prediction_scores_zero(name, prediction):
    scores = compute_rouge([prediction], [["회의 일정을 알려준다", "meeting at noon"]], tokenizer=name)
    assert scores == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rouge_combined_f1": 0.0}


def test_empty_input_gives_zeros():
    assert compute_rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rouge_combined_f1": 0.0}


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"2 predictions.*3 references"):
        compute_rouge(["가", "나"], ["가", "나", "다"])


def test_empty_reference_list_names_example_index():
    with pytest.raises(ValueError, match="Example 1"):
        compute_rouge(["가", "나"], [["가"], []])


def test_unknown_tokenizer_names_valid_choices():
    with pytest.raises(ValueError, match="kiwi, whitespace, default"):
        get_tokenizer("mecab")
    with pytest.raises(ValueError, match="kiwi, whitespace, default"):
        compute_rouge(["가"], ["가"], tokenizer="mecab")


def test_unknown_multi_reference_rule():
    with pytest.raises(ValueError, match="max, mean"):
        compute_rouge(["가"], ["가"], multi_reference="min")


@pytest.mark.parametrize("name", ["kiwi", "whitespace", "default"])
def test_matches_rouge_score_per_example_and_mean(name):
    references = [reference for reference, _ in PAIRS]
    predictions = [prediction for _, prediction in PAIRS]
    expected = [_naive_scores(name, reference, prediction) for reference, prediction in PAIRS]
    for got, want in zip(rouge_per_example(predictions, references, tokenizer=name), expected, strict=True):
        for key in KEYS:
            assert got[key] == pytest.approx(want[key], abs=1e-9)
    means = compute_rouge(predictions, references, tokenizer=name)
    for key in KEYS:
        assert means[key] == pytest.approx(sum(scores[key] for scores in expected) / len(expected), abs=1e-9)


@pytest.mark.parametrize("name", ["kiwi", "whitespace"])
def test_multi_reference_max_matches_rouge_score_score_multi(name):
    scorer = RougeScorer(list(KEYS), tokenizer=get_tokenizer(name))
    predictions = [prediction for _, prediction in PAIRS]
    references = [
        [PAIRS[i][0], PAIRS[(i + 1) % len(PAIRS)][0], PAIRS[(i + 7) % len(PAIRS)][1]] for i in range(len(PAIRS))
    ]
    got = rouge_per_example(predictions, references, tokenizer=name, multi_reference="max")
    for scores, prediction, refs in zip(got, predictions, references, strict=True):
        want = scorer.score_multi(refs, prediction)
        for key in KEYS:
            assert scores[key] == pytest.approx(want[key].fmeasure, abs=1e-9)


def test_lcs_and_ngrams_match_rouge_score_on_random_sequences():
    # Small alphabets force many repeats and ties, the hard cases for LCS and clipped n-gram counts.
    rng = random.Random(0)
    pairs = [
        (" ".join(rng.choices("abcde", k=rng.randint(0, 40))), " ".join(rng.choices("abcdef", k=rng.randint(0, 40))))
        for _ in range(300)
    ]
    got = rouge_per_example(
        [prediction for _, prediction in pairs], [reference for reference, _ in pairs], "whitespace"
    )
    for scores, (reference, prediction) in zip(got, pairs, strict=True):
        want = _naive_scores("whitespace", reference, prediction)
        for key in KEYS:
            assert scores[key] == pytest.approx(want[key], abs=1e-9)


def test_kiwi_cache_gives_the_same_tokens_and_scores_cold_and_warm():
    kiwi = get_tokenizer("kiwi")
    predictions = [prediction for _, prediction in PAIRS]
    references = [[reference, PAIRS[(i + 3) % len(PAIRS)][0]] for i, (reference, _) in enumerate(PAIRS)]
    kiwi.cache.clear()
    cold = rouge_per_example(predictions, references)
    assert kiwi.cache.misses > 0 and kiwi.cache.hits == 0
    warm = rouge_per_example(predictions, references)
    assert kiwi.cache.hits > 0
    assert warm == cold
    texts = [reference for reference, _ in PAIRS] + [KOREAN, KOREAN]
    assert kiwi.tokenize_many(texts) == [kiwi.tokenize(text) for text in texts]


def test_kiwi_cache_hands_out_copies():
    kiwi = get_tokenizer("kiwi")
    first = kiwi.tokenize_many([KOREAN])[0]
    first.append("changed")
    assert kiwi.tokenize_many([KOREAN])[0] == kiwi.tokenize(KOREAN)


def test_token_cache_is_bounded_least_recently_used():
    from pipeline.metrics import TokenCache

    cache = TokenCache(maxsize=2)
    cache.store(["a", "b"], [["a"], ["b"]])
    assert cache.lookup(["a"]) == [("a",)]  # "a" is now the most recently used
    cache.store(["c"], [["c"]])
    assert len(cache) == 2
    assert cache.lookup(["a", "b", "c"]) == [("a",), None, ("c",)]
    with pytest.raises(ValueError, match="maxsize"):
        TokenCache(0)


# --------------------------------------------------------------------------------- English, rules, collapse

ENGLISH_PAIRS = [
    (
        "#Person1# asks #Person2# about the running shoes she bought.",
        "#Person2# bought running shoes and #Person1# asked about them.",
    ),
    ("The doctors examined the patients' breathing problems.", "A doctor examines a patient who cannot breathe."),
    ("They're planning a trip to Paris in June.", "They planned trips to Paris."),
]


def test_english_tokenizer_equals_rouge_score_with_its_stemmer():
    scorer = RougeScorer(list(KEYS), use_stemmer=True)
    references = [reference for reference, _ in ENGLISH_PAIRS]
    predictions = [prediction for _, prediction in ENGLISH_PAIRS]
    for got, (reference, prediction) in zip(
        rouge_per_example(predictions, references, tokenizer="english"), ENGLISH_PAIRS, strict=True
    ):
        want = scorer.score(reference, prediction)
        for key in KEYS:
            assert got[key] == pytest.approx(want[key].fmeasure, abs=1e-12)
    # The stemmer is what makes "bought running shoes" meet "running shoes she bought" on "run"/"shoe".
    assert get_tokenizer("english").tokenize("running shoes") == ["run", "shoe"]
    assert get_tokenizer("default").tokenize("running shoes") == ["running", "shoes"]


def test_default_rule_is_the_competitions_mean():
    prediction, references = "사과 바나나 체리 포도", [["포도 체리 바나나 사과", "사과 바나나 수박 딸기"]]
    assert compute_rouge([prediction], references, tokenizer="whitespace") == compute_rouge(
        [prediction], references, tokenizer="whitespace", multi_reference="mean"
    )


def test_rouge_by_rule_equals_each_rule_alone():
    predictions = [prediction for _, prediction in PAIRS]
    references = [[reference, PAIRS[(i + 5) % len(PAIRS)][0]] for i, (reference, _) in enumerate(PAIRS)]
    by_rule = compute_rouge_by_rule(predictions, references, "whitespace")
    assert set(by_rule) == {"max", "mean"}
    for rule, scores in by_rule.items():
        assert scores == compute_rouge(predictions, references, "whitespace", multi_reference=rule)
    assert by_rule["max"]["rouge1"] > by_rule["mean"]["rouge1"]


def test_prediction_diversity_and_collapse_reason():
    thresholds = {"collapse_min_distinct": 0.5, "collapse_max_top_share": 0.3}
    constant = prediction_diversity(["같은 요약"] * 9 + ["다른 요약"])
    assert constant == pytest.approx({"distinct_predictions": 0.2, "top_prediction_share": 0.9})
    reason = collapse_reason(constant, thresholds)
    assert "20.0% of the predictions are distinct" in reason and "collapse_min_distinct 50%" in reason
    assert "one prediction is 90.0% of all predictions" in reason and "collapse_max_top_share 30%" in reason
    # Mostly distinct, but one summary for 4 of 10 dialogues: the top share alone flags it.
    repeated = prediction_diversity(["같은 요약"] * 4 + [f"요약 {i}" for i in range(6)])
    assert repeated["distinct_predictions"] == pytest.approx(0.7)
    assert collapse_reason(repeated, thresholds).startswith("one prediction is 40.0%")
    # Every prediction distinct: healthy, however few there are (a text seen once repeats nothing).
    assert prediction_diversity(["하나"]) == {"distinct_predictions": 1.0, "top_prediction_share": 0.0}
    assert collapse_reason(prediction_diversity(["가", "나", "다"]), thresholds) is None
    assert collapse_reason({"eval_distinct_predictions": 0.1, "eval_top_prediction_share": 0.0}, thresholds, "eval_")
    assert collapse_reason({}, thresholds) is None  # metrics from before the check existed
