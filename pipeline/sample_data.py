"""Synthetic Korean dialogue-summarization data in the competition CSV format.

The real competition data cannot ship with the code, yet tests, smoke runs and demos need a data set that a
tiny model can actually learn in about a minute on a CPU. This module generates one: short dialogues from
twelve everyday scenarios (meetings, reservations, refunds, PII exchanges, ...), whose summaries are a
deterministic function of slot values that appear in the dialogue. The surface text of each turn is drawn from
several phrasings so a model has to read the dialogue, not memorise a single string, while the summary
templates stay fixed per scenario so learning remains quick.

Files use the competition layout: ``fname,dialogue,summary,topic`` for train/dev and ``fname,dialogue`` for
test, turns as ``#PersonN#: ...`` lines and PII masked as ``#PhoneNumber#``, ``#Address#`` and so on.

Example:
    >>> rows = generate_dialogues(2, seed=0, split="dev")
    >>> [row["fname"] for row in rows]
    ['dev_0', 'dev_1']
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
import random
import string
from collections.abc import Callable, Sequence

from pipeline.artifacts import atomic_write_text

__all__ = ["generate_dialogues", "write_sample_data"]

P1 = "#Person1#"
P2 = "#Person2#"

TRAIN_COLUMNS = ("fname", "dialogue", "summary", "topic")
TEST_COLUMNS = ("fname", "dialogue")

# Particles whose form depends on whether the preceding syllable ends in a consonant (batchim):
# key (written in the after-consonant form, as used in templates) -> (after consonant, after vowel).
_PARTICLES = {
    "은": ("은", "는"),
    "이": ("이", "가"),
    "을": ("을", "를"),
    "과": ("과", "와"),
    "으로": ("으로", "로"),
}

# Sino-Korean readings of the final digit decide the particle after numbers ("3일이", "2명이").
# Final consonant per digit: 0 영(ㅇ) 1 일(ㄹ) 2 이 3 삼(ㅁ) 4 사 5 오 6 육(ㄱ) 7 칠(ㄹ) 8 팔(ㄹ) 9 구.
_DIGIT_BATCHIM = {"0": "ng", "1": "l", "2": "", "3": "m", "4": "", "5": "", "6": "k", "7": "l", "8": "l", "9": ""}


def _final_consonant(word: str) -> str:
    """Classify how ``word`` ends for particle choice.

    Args:
        word: The word the particle attaches to.

    Returns:
        ``""`` for a vowel ending, ``"l"`` for a ㄹ ending (which takes ``로`` rather than ``으로``) and any
        other non-empty string for a consonant ending.
    """
    # Speaker markers are read "퍼슨원" / "퍼슨투", which is how the real data attaches particles to them.
    if word.endswith(P1):
        return "n"
    if word.endswith(P2):
        return ""
    last = word.rstrip()[-1]
    if "가" <= last <= "힣":
        final = (ord(last) - 0xAC00) % 28
        if final == 0:
            return ""
        return "l" if final == 8 else "c"
    if last in _DIGIT_BATCHIM:
        return _DIGIT_BATCHIM[last]
    # Masks such as "#Address#" have no single reading; the vowel form ("#Address#로") reads naturally
    # after "#", so use it by default.
    return ""


def _attach(word: str, particle: str) -> str:
    """Append a Korean particle to ``word`` in the form its last sound requires.

    Args:
        word: The noun phrase.
        particle: A key of ``_PARTICLES`` (consonant-ending form, e.g. ``"을"``).

    Returns:
        ``word`` followed by the correct particle form, e.g. ``"운동화를"``, ``"코트를"``, ``"지갑을"``.
    """
    after_consonant, after_vowel = _PARTICLES[particle]
    ending = _final_consonant(word)
    if particle == "으로" and ending == "l":
        return word + after_vowel
    return word + (after_consonant if ending else after_vowel)


_BARE_DAYS = frozenset({"오늘", "내일", "모레"})


class _KoreanFormatter(string.Formatter):
    """``str.format`` where a particle as format spec attaches it: ``"{item:을}"`` -> ``"지갑을"``, ``"{day:에}"``."""

    def format_field(self, value: object, format_spec: str) -> str:
        if format_spec == "에":
            # Deictic days are adverbs: "내일 도착", not "내일에 도착"; named days take the particle.
            return str(value) if value in _BARE_DAYS else f"{value}에"
        if format_spec in _PARTICLES:
            return _attach(str(value), format_spec)
        return super().format_field(value, format_spec)


_FORMATTER = _KoreanFormatter()


def _fill(template: str, **slots: object) -> str:
    """Format ``template`` with ``slots``, attaching particles given as format specs."""
    return _FORMATTER.format(template, **slots)


# A turn is (speaker, phrasing, phrasing, ...): one phrasing is picked at random, so the same content appears
# in varied surface text and a model has to read the slots rather than memorise whole dialogues.
Turn = tuple[str, ...]


def _speak(rng: random.Random, slots: dict[str, object], *turns: Turn) -> list[str]:
    """Render turns as ``#PersonN#: text`` lines, picking one phrasing per turn and filling in ``slots``."""
    return [f"{speaker}: {_fill(rng.choice(phrasings), **slots)}" for speaker, *phrasings in turns]


# Slot value lists shared by several scenarios. Values end in Hangul or digits so particles attach cleanly.
_DAYS = ["내일", "모레", "이번 주 수요일", "이번 주 금요일", "다음 주 월요일", "다음 주 목요일", "토요일"]
_TIMES = ["오전 9시", "오전 10시", "오전 11시", "오후 1시", "오후 2시", "오후 3시", "오후 4시", "오후 5시"]


def _meeting(rng: random.Random) -> tuple[list[str], str]:
    """Schedule a meeting; either speaker may propose it, and the summary names the proposer."""
    slots = {
        "subject": rng.choice(["신제품 기획", "분기 예산", "마케팅 전략", "고객 설문 결과", "신입 사원 교육"]),
        "place": rng.choice(["3층 회의실", "대회의실", "본관 세미나실", "1층 카페", "소회의실"]),
        "day": rng.choice(_DAYS),
        "time": rng.choice(_TIMES),
    }
    proposal = ("{day} {time}에 {place}에서 보는 건 어때요?", "{day} {time}에 {place}에서 회의하면 어떨까요?")
    if rng.random() < 0.5:
        proposer, other = P1, P2
        lines = _speak(
            rng,
            slots,
            (P1, "{subject} 건으로 회의를 한번 해야 할 것 같아요.", "{subject} 문제로 같이 논의할 시간이 필요해요."),
            (P2, "좋아요. 언제가 괜찮으세요?", "저도 그렇게 생각했어요. 언제 할까요?"),
            (P1, *proposal),
            (P2, "네, 그 시간 좋아요. 그때 뵐게요.", "좋습니다. 자료를 미리 준비해 갈게요."),
        )
    else:
        # Here the second speaker proposes, so a model must read who names the time instead of always
        # crediting #Person1#.
        proposer, other = P2, P1
        lines = _speak(
            rng,
            slots,
            (P1, "{subject} 건으로 언제 회의하면 좋을까요?", "{subject} 때문에 모여야 하는데 언제가 좋으세요?"),
            (P2, *proposal),
            (P1, "좋아요. 그때 봬요.", "네, 그 시간이면 저도 괜찮아요."),
        )
    summary = _fill(
        "{p:은} {o}에게 {day} {time}에 {place}에서 {subject} 회의를 하자고 제안한다.", p=proposer, o=other, **slots
    )
    return lines, summary


def _restaurant(rng: random.Random) -> tuple[list[str], str]:
    """Book a table by phone; the caller leaves a masked phone number and a seating request."""
    slots = {
        "name": rng.choice(["바다 횟집", "한옥 갈비", "미소 초밥", "서울 국수", "파스타 하우스", "정원 한정식"]),
        "day": rng.choice(_DAYS),
        "time": rng.choice(["낮 12시", "오후 1시", "저녁 6시", "저녁 7시", "저녁 8시"]),
        "n": rng.randint(2, 8),
        "seat": rng.choice(["창가 자리", "룸", "조용한 자리", "테라스 자리"]),
    }
    lines = _speak(
        rng,
        slots,
        (P1, "감사합니다, {name}입니다.", "네, {name}입니다."),
        (P2, "{day} {time}에 {n}명 예약하려고요.", "{day} {time}에 {n}명 자리 있을까요?"),
        (P1, "네, 가능합니다. 연락처를 알려 주세요.", "예약 가능합니다. 전화번호가 어떻게 되세요?"),
        (P2, "#PhoneNumber#입니다. {seat:으로} 부탁드려요.", "#PhoneNumber#이고, {seat:으로} 주세요."),
    )
    summary = _fill("{p:은} {name}에 {day} {time} {n}명 예약을 하고 {seat:을} 부탁한다.", p=P2, **slots)
    return lines, summary


def _refund(rng: random.Random) -> tuple[list[str], str]:
    """Ask for a refund; whether a receipt is shown decides refund versus exchange in the summary."""
    slots = {
        "when": rng.choice(["어제", "지난주에", "사흘 전에", "지난 주말에"]),
        "item": rng.choice(["운동화", "블루투스 이어폰", "겨울 코트", "전기 포트", "청바지", "가죽 지갑"]),
        "problem": rng.choice(["사이즈가 안 맞아서", "한쪽이 고장 나서", "색이 사진과 달라서", "흠집이 있어서"]),
    }
    opening = (
        (
            P1,
            "저기요, {when} 여기서 산 {item}인데요. {problem} 환불하고 싶어요.",
            "{when} 산 {item}인데 {problem} 환불되나요?",
        ),
        (P2, "네, 영수증 가지고 계세요?", "영수증을 보여 주시겠어요?"),
    )
    # The receipt branch changes the outcome, so the summary depends on more than the first turn.
    if rng.random() < 0.7:
        lines = _speak(
            rng,
            slots,
            *opening,
            (P1, "여기 있어요.", "네, 여기요."),
            (
                P2,
                "확인했습니다. 결제하신 카드로 환불해 드릴게요.",
                "네, 확인됐습니다. 카드로 바로 환불해 드리겠습니다.",
            ),
        )
        outcome = "{o:은} 영수증을 확인하고 카드로 환불해 준다."
    else:
        lines = _speak(
            rng,
            slots,
            *opening,
            (P1, "영수증은 잃어버렸어요.", "영수증을 버린 것 같아요."),
            (P2, "영수증이 없으면 환불은 어렵고 교환만 가능합니다.", "죄송하지만 영수증이 없으면 교환만 돼요."),
        )
        outcome = "영수증이 없어서 {o:은} 교환만 가능하다고 안내한다."
    summary = _fill("{p:은} {when} 산 {item:이} {problem} 환불을 요청하고, " + outcome, p=P1, o=P2, **slots)
    return lines, summary


# Symptoms belong to a clinic so dialogues stay plausible (no toothache at the dermatologist).
_CLINICS = {
    "서울 내과": ["열이 나고 기침이 심해서", "배가 계속 아파서"],
    "밝은 이비인후과": ["목이 많이 부어서", "귀가 먹먹해서"],
    "튼튼 정형외과": ["허리가 아파서", "발목을 삐어서"],
    "맑은 피부과": ["피부에 두드러기가 나서", "얼굴에 뾰루지가 나서"],
    "연세 치과": ["어금니가 시려서", "잇몸이 부어서"],
}


def _doctor(rng: random.Random) -> tuple[list[str], str]:
    """Book a clinic appointment, identified by a masked date of birth."""
    clinic = rng.choice(sorted(_CLINICS))
    slots = {
        "clinic": clinic,
        "symptom": rng.choice(_CLINICS[clinic]),
        "day": rng.choice(_DAYS),
        "time": rng.choice(_TIMES),
    }
    lines = _speak(
        rng,
        slots,
        (P1, "네, {clinic}입니다.", "{clinic}입니다. 무엇을 도와드릴까요?"),
        (P2, "{symptom} {day} 진료를 예약하고 싶어요.", "{symptom} 그러는데 {day:에} 진료 볼 수 있을까요?"),
        (P1, "{time}에 가능합니다. 생년월일이 어떻게 되세요?", "{time:으로} 해 드릴게요. 생년월일을 알려 주세요."),
        (P2, "#DateOfBirth#입니다.", "네, #DateOfBirth#입니다."),
    )
    summary = _fill("{p:은} {symptom} {clinic}에 {day} {time} 진료를 예약한다.", p=P2, **slots)
    return lines, summary


def _phone_exchange(rng: random.Random) -> tuple[list[str], str]:
    """Swap masked phone numbers after meeting somewhere and agree on a next activity."""
    # (as said, as summarised): the two share the activity noun, so the summary stays grounded.
    plan_said, plan_summary = rng.choice(
        [
            ("커피 한잔해요", "커피를 마시기로"),
            ("등산 가요", "등산을 가기로"),
            ("영화 봐요", "영화를 보기로"),
            ("점심 먹어요", "점심을 먹기로"),
            ("테니스 쳐요", "테니스를 치기로"),
            ("전시회 가요", "전시회에 가기로"),
        ]
    )
    slots = {
        "event": rng.choice(["동창회", "요가 수업", "독서 모임", "회사 워크숍", "친구 결혼식", "영어 스터디"]),
        "day": rng.choice(_DAYS),
        "plan": plan_said,
    }
    lines = _speak(
        rng,
        slots,
        (P1, "오늘 {event}에서 이야기 나눠서 즐거웠어요.", "{event}에서 만나서 정말 반가웠어요."),
        (P2, "저도요. 연락처 좀 알려 주실래요?", "저도 즐거웠어요. 번호 좀 알려 주세요."),
        (P1, "제 번호는 #PhoneNumber#입니다.", "#PhoneNumber#입니다. 문자 주세요."),
        (P2, "저장했어요. {day:에} 같이 {plan}.", "고마워요. 그럼 {day:에} 같이 {plan}."),
    )
    summary = _fill(
        "{a:과} {b:은} {event}에서 만나 전화번호를 주고받고 {day:에} {plan} 한다.",
        a=P1,
        b=P2,
        **slots | {"plan": plan_summary},
    )
    return lines, summary


def _delivery(rng: random.Random) -> tuple[list[str], str]:
    """Change the delivery address of an order to a masked address."""
    slots = {
        "item": rng.choice(
            ["책상 의자", "전자레인지", "노트북 가방", "공기청정기", "커피 머신", "이불 세트", "선풍기", "책장"]
        ),
        "day": rng.choice(_DAYS),
        "ordered": rng.choice(["어제", "오늘 아침에", "그저께", "지난주에"]),
    }
    lines = _speak(
        rng,
        slots,
        (
            P1,
            "{ordered} 주문한 {item}의 배송지를 바꾸고 싶어요.",
            "{ordered} 주문한 {item} 배송 주소를 바꿀 수 있을까요?",
        ),
        (P2, "네, 새 주소를 말씀해 주세요.", "가능합니다. 바꾸실 주소를 알려 주세요."),
        (P1, "#Address#로 보내 주세요.", "#Address#로 바꿔 주세요."),
        (P2, "변경됐습니다. {day:에} 도착할 예정입니다.", "바꿔 드렸어요. {item:은} {day:에} 도착합니다."),
    )
    summary = _fill(
        "{p:은} {ordered} 주문한 {item}의 배송지를 #Address#로 바꾸고, {o:은} {day:에} 도착한다고 안내한다.",
        p=P1,
        o=P2,
        **slots,
    )
    return lines, summary


def _airport(rng: random.Random) -> tuple[list[str], str]:
    """Check in for a flight with a masked passport number and a seat request."""
    slots = {
        "dest": rng.choice(["도쿄", "오사카", "방콕", "파리", "뉴욕", "제주", "싱가포르", "하노이"]),
        "seat": rng.choice(["창가 좌석", "통로 좌석", "비상구 좌석", "앞쪽 좌석"]),
        "gate": rng.randint(2, 48),
    }
    lines = _speak(
        rng,
        slots,
        (P1, "{dest}행 탑승 수속 도와드리겠습니다. 여권 주시겠어요?", "{dest}에 가시죠? 여권을 보여 주시겠어요?"),
        (P2, "여기요. #PassportNumber#입니다. {seat:으로} 부탁드려요.", "#PassportNumber#입니다. {seat} 있을까요?"),
        (P1, "{seat:으로} 드렸습니다. {gate}번 게이트에서 탑승하세요.", "네, 탑승은 {gate}번 게이트입니다."),
    )
    summary = _fill(
        "{p:은} {dest}행 비행기 탑승 수속을 하며 {seat:을} 요청하고, {o:은} {gate}번 게이트를 안내한다.",
        p=P2,
        o=P1,
        **slots,
    )
    return lines, summary


def _lost_card(rng: random.Random) -> tuple[list[str], str]:
    """Report a lost bank card, giving masked card and resident registration numbers."""
    slots = {
        "bank": rng.choice(["한빛은행", "푸른은행", "새솔은행", "미래은행"]),
        "place": rng.choice(["지하철", "택시", "영화관", "버스", "식당"]),
        "days": rng.choice([3, 5, 7, 10]),
    }
    lines = _speak(
        rng,
        slots,
        (P1, "{bank} 고객센터입니다.", "네, {bank}입니다."),
        (P2, "{place}에서 카드를 잃어버린 것 같아요.", "카드를 {place}에서 잃어버렸어요. 정지해 주세요."),
        (P1, "카드 번호와 주민등록번호를 말씀해 주세요.", "본인 확인을 위해 카드 번호와 주민등록번호를 알려 주세요."),
        (P2, "#CardNumber#이고, 주민등록번호는 #SSN#입니다.", "카드는 #CardNumber#, 주민등록번호는 #SSN#입니다."),
        (P1, "정지했습니다. 새 카드는 {days}일 안에 보내 드릴게요.", "새 카드는 {days}일 안에 도착합니다."),
    )
    summary = _fill(
        "{p:은} {place}에서 카드를 잃어버려 {bank}에 정지를 요청하고, 새 카드는 {days}일 안에 받는다.", p=P2, **slots
    )
    return lines, summary


def _taxi(rng: random.Random) -> tuple[list[str], str]:
    """Call the taxi company about an item left in a cab, identified by a masked car number."""
    slots = {
        "item": rng.choice(["휴대폰", "우산", "노트북", "지갑", "쇼핑백", "서류 가방", "선글라스", "장갑"]),
        "minutes": rng.choice([10, 15, 20, 30]),
        "stop": rng.choice(["서울역", "강남역", "시청", "홍대입구역", "잠실역", "인천공항"]),
    }
    lines = _speak(
        rng,
        slots,
        (
            P1,
            "조금 전에 {stop}에서 내린 택시에 {item:을} 두고 내렸어요.",
            "{stop}까지 탄 택시에 {item:을} 놓고 내린 것 같아요.",
        ),
        (P2, "타신 택시의 차량 번호를 아세요?", "혹시 차량 번호를 기억하세요?"),
        (P1, "영수증을 보니 #CarNumber#입니다.", "네, #CarNumber#입니다."),
        (P2, "기사님께 확인하고 {minutes}분 안에 연락드릴게요.", "기사님께 여쭤보고 {minutes}분 안에 전화드릴게요."),
    )
    summary = _fill(
        "{p:은} {stop}까지 탄 택시에 {item:을} 두고 내려 차량 번호를 알려 주고, "
        "{o:은} {minutes}분 안에 연락하겠다고 한다.",
        p=P1,
        o=P2,
        **slots,
    )
    return lines, summary


def _library(rng: random.Random) -> tuple[list[str], str]:
    """Borrow a library book; if it is on loan, the patron reserves it instead."""
    slots = {
        "book": rng.choice(
            [
                "어린 왕자",
                "데미안",
                "노인과 바다",
                "파이썬 입문",
                "한국사 이야기",
                "코스모스",
                "총균쇠",
                "이기적 유전자",
            ]
            + ["해리 포터", "동물농장", "사피엔스", "미움받을 용기"]
        ),
        "weeks": rng.choice([1, 2, 3]),
        "days": rng.choice([2, 3, 5, 7]),
    }
    request = (P1, "{book:을} 빌리고 싶은데요.", "혹시 {book} 있나요? 빌리고 싶어요.")
    # Availability changes what happens, so the summary is not fixed by the opening request alone.
    if rng.random() < 0.7:
        lines = _speak(
            rng,
            slots,
            request,
            (P2, "네, 회원증을 보여 주시겠어요?", "회원증 좀 주시겠어요?"),
            (P1, "여기 있어요. 언제까지 반납해야 하나요?", "네, 여기요. 얼마나 빌릴 수 있어요?"),
            (P2, "{weeks}주 안에 반납하시면 됩니다.", "{weeks}주 동안 빌릴 수 있어요."),
        )
        template = "{p:은} 도서관에서 {book:을} 빌리고, {o:은} {weeks}주 안에 반납하라고 안내한다."
    else:
        lines = _speak(
            rng,
            slots,
            request,
            (
                P2,
                "그 책은 지금 대출 중이에요. {days}일 뒤에 반납될 예정이에요.",
                "지금 대출 중이라 {days}일 뒤에 들어와요.",
            ),
            (P1, "그럼 예약해 주세요.", "아, 그러면 예약할게요."),
        )
        template = "{p:은} {book:을} 빌리려 했지만 대출 중이어서 {days}일 뒤 반납될 책을 예약한다."
    return lines, _fill(template, p=P1, o=P2, **slots)


def _interview(rng: random.Random) -> tuple[list[str], str]:
    """Job interview; the result will be sent to a masked e-mail address."""
    slots = {
        "company": rng.choice(["한결전자", "새봄출판사", "다온물산", "누리소프트", "푸른식품"]),
        "job": rng.choice(["마케팅 담당자", "웹 개발자", "회계 담당자", "디자이너", "영업 사원"]),
        "years": rng.randint(2, 9),
        "days": rng.choice([3, 5, 7]),
    }
    lines = _speak(
        rng,
        slots,
        (
            P1,
            "{company} {job} 자리에 지원하셨죠? 경력을 말씀해 주세요.",
            "{company} {job} 면접입니다. 경력을 소개해 주세요.",
        ),
        (P2, "전 직장에서 {job:으로} {years}년 동안 일했습니다.", "저는 {job:으로} {years}년 일했습니다."),
        (
            P1,
            "결과는 {days}일 안에 이메일로 알려 드릴게요. #Email# 맞으시죠?",
            "결과는 {days}일 안에 #Email#로 보내 드릴게요.",
        ),
        (P2, "네, 감사합니다.", "네, 연락 기다리겠습니다."),
    )
    summary = _fill(
        "{p:은} {company} {job} 면접에서 {years}년 경력을 이야기하고, "
        "{o:은} 결과를 {days}일 안에 이메일로 알려 주겠다고 한다.",
        p=P2,
        o=P1,
        **slots,
    )
    return lines, summary


def _weather(rng: random.Random) -> tuple[list[str], str]:
    """Change weekend plans because of a weather forecast."""
    # (as said, as summarised): the summarised noun occurs inside the spoken phrase.
    plan_said, plan_summary = rng.choice(
        [
            ("자전거 타러", "자전거 타기"),
            ("등산하러", "등산"),
            ("캠핑하러", "캠핑"),
            ("낚시하러", "낚시"),
            ("소풍", "소풍"),
        ]
    )
    slots = {
        "day": rng.choice(["토요일", "일요일", "이번 주말", "내일", "모레"]),
        "plan": plan_said,
        "weather": rng.choice(["비가 온다", "눈이 많이 온다", "태풍이 온다", "미세먼지가 심하다"]),
        "alt": rng.choice(["영화관", "박물관", "실내 수영장", "볼링장", "미술관"]),
    }
    lines = _speak(
        rng,
        slots,
        (P1, "{day:에} {plan} 가기로 한 거 기억하지?", "우리 {day:에} {plan} 가는 거 맞지?"),
        (P2, "응, 그런데 일기 예보에서 {day:에} {weather}고 하던데.", "그런데 {day:에} {weather}고 하더라."),
        (P1, "정말? 그럼 {alt}에 가는 건 어때?", "아쉽다. 그러면 {alt}에 갈까?"),
        (P2, "좋아, 그럼 {alt}에 가자.", "그래, {alt} 좋지."),
    )
    summary = _fill(
        "{a:과} {b:은} {day:에} {weather}는 예보를 듣고 {plan} 대신 {alt}에 가기로 한다.",
        a=P1,
        b=P2,
        **slots | {"plan": plan_summary},
    )
    return lines, summary


# Topic strings mirror the short Korean topic labels of the competition data.
_SCENARIOS: list[tuple[str, Callable[[random.Random], tuple[list[str], str]]]] = [
    ("회의 일정", _meeting),
    ("식당 예약", _restaurant),
    ("환불 요청", _refund),
    ("진료 예약", _doctor),
    ("연락처 교환", _phone_exchange),
    ("배송지 변경", _delivery),
    ("탑승 수속", _airport),
    ("카드 분실", _lost_card),
    ("분실물 문의", _taxi),
    ("도서 대출", _library),
    ("취업 면접", _interview),
    ("주말 계획", _weather),
]


def generate_dialogues(n: int, seed: int = 0, split: str = "train") -> list[dict[str, str]]:
    """Generate ``n`` synthetic dialogues with summaries and topics.

    Each row comes from one of twelve scenarios picked at random; slot values (places, times, items, numbers)
    are drawn from fixed lists and copied into both the dialogue and the summary, so the summary is learnable
    from the dialogue alone.

    Args:
        n: Number of rows; 0 gives an empty list.
        seed: Base random seed. The same ``(seed, split)`` always gives the same rows.
        split: Split name used for the ``fname`` prefix (``f"{split}_{i}"``) and mixed into the random seed,
            so ``"dev"`` and ``"test"`` rows are fresh draws from the same distribution, not copies of train.

    Returns:
        A list of dicts with keys ``fname``, ``dialogue`` (``#PersonN#: ...`` turns joined by ``"\\n"``),
        ``summary`` and ``topic``.

    Raises:
        ValueError: If ``n`` is negative or ``split`` is empty.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not split:
        raise ValueError("split must be a non-empty string")
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes and
    # PYTHONHASHSEED, and keeps each split's stream independent of the others.
    rng = random.Random(f"sample_data:{split}:{seed}")
    rows = []
    for i in range(n):
        topic, scenario = rng.choice(_SCENARIOS)
        lines, summary = scenario(rng)
        dialogue = "\n".join(lines)
        rows.append({"fname": f"{split}_{i}", "dialogue": dialogue, "summary": summary, "topic": topic})
    return rows


def _write_csv_atomic(path: pathlib.Path, columns: Sequence[str], rows: list[dict[str, str]]) -> None:
    """Write ``rows`` to ``path`` as CSV, atomically (readers never see a half-written file).

    Args:
        path: Destination file.
        columns: Header, in order; other keys of the rows are dropped.
        rows: Rows to write.
    """
    buffer = io.StringIO(newline="")  # newline="" lets the csv module quote the newlines inside dialogues itself
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_sample_data(
    out_dir: str | os.PathLike[str],
    n_train: int = 2000,
    n_dev: int = 200,
    n_test: int = 100,
    seed: int = 0,
) -> dict[str, pathlib.Path]:
    """Write ``train.csv``, ``dev.csv`` and ``test.csv`` of synthetic data in the competition format.

    Args:
        out_dir: Directory to write into; created (with parents) if missing. Existing files are replaced.
        n_train: Number of training rows.
        n_dev: Number of validation rows.
        n_test: Number of test rows (written without ``summary`` and ``topic``, like the competition test set).
        seed: Base random seed; each split derives its own stream from it.

    Returns:
        ``{"train": path, "dev": path, "test": path}`` with the written file paths.

    Raises:
        ValueError: If any of ``n_train``, ``n_dev`` or ``n_test`` is below 1 (the message names it).
    """
    counts = {"n_train": n_train, "n_dev": n_dev, "n_test": n_test}
    for name, value in counts.items():
        # bool is an int subclass; True as a row count is almost certainly a mistake.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n, columns in (
        ("train", n_train, TRAIN_COLUMNS),
        ("dev", n_dev, TRAIN_COLUMNS),
        ("test", n_test, TEST_COLUMNS),
    ):
        path = out / f"{split}.csv"
        _write_csv_atomic(path, columns, generate_dialogues(n, seed=seed, split=split))
        paths[split] = path
    return paths
