"""Final-answer extraction on realistic model outputs, normalisation and comparison."""

from __future__ import annotations

import pytest

from l2reason.eval.answers import (
    answers_equal,
    extract_answer,
    find_numbers,
    normalize_answer,
    parse_number,
)

# (model output, expected extracted answer). Written to look like what a 0.5B
# chat model emits after "think step by step".
OUTPUTS: list[tuple[str, str | None]] = [
    ("Tom has 12 + 30 = 42 marbles. The answer is 42.", "42"),
    ("She pays 5 x 250 = 1250 dollars.\n\n**Answer:** $1,250", "1250"),
    ("So the fraction is 3/4.\n\nFinal answer: \\boxed{\\frac{3}{4}}", "3/4"),
    ("Natalia sold 48/2 = 24 clips in May.\n48 + 24 = 72\n#### 72", "72"),
    ("The temperature dropped from 3 to -4, a change of 3 - 10 = -7.\n#### -7", "-7"),
    ("She started with 25 apples, gave away 7, so she has 18 apples left.", "18"),
    ("Subtract 3 from both sides: 2x = 10. Divide by 2: \\(x = 5\\)", "5"),
    ("Each pen costs 7 / 2 = 3.50 dollars", "3.5"),
    ("First 3 boxes hold 12 each, so 36. Then 4 more boxes hold 9 each, 36 + 36 = 72.", "72"),
    ("[[ ## reasoning ## ]]\n3 cats have 12 legs.\n\n[[ ## answer ## ]]\n12\n\n[[ ## completed ## ]]", "12"),
    ("Let's think step by step. First, we need to find how many", None),
    ("", None),
    ("The total is $\\boxed{1{,}250}$ dollars.", "1250"),
    ("So 45 of the 100 students, i.e. 45%. The answer is 45%.", "45"),
    ("We get 120 * 0.25 = 30 off, so 120 - 30 = 90. The answer is $90.00.", "90"),
    ("The answer is: **0.50**", "0.5"),
    ("The answer is 3 + 4 = 7.", "7"),
    ("Hmm, at first I thought the answer is 10. Wait, 4 * 3 = 12, so the answer is 12.", "12"),
    ("\\boxed{12} is what I got, but checking: 12 - 2 = 10 ... yes 12.", "12"),
    ("Nested: \\boxed{\\frac{\\sqrt{4}}{2} = 1} done", "1"),
    ("To answer this: we need 5 apples per pie. 3 pies need 15 apples. So 20 - 15 = 5 left.", "5"),
    ("Area = 5^2 = 25 cm^2", "25"),
    ("Population: 1,234,567 people in 2020, up 0.5% to 1,240,740.", "1240740"),
    ("x1 = 2 and x2 = 3, so the larger root is x2", "3"),
    ("The probability is \\dfrac{11}{26}.", "11/26"),
    ("Speed = 120 km / 2 h = 60 km/h", "60"),
    ("It takes 1/2 hour.", "1/2"),
    ("The final answer is $\\boxed{-3}$.", "-3"),
    ("The answer is \u22128.", "-8"),
    ("Final Answer: The final answer is 17. I hope it is correct.", "17"),
    ("He earns $0.25 per can and 6750 * 0.25 = $1687.50 in total.", "1687.5"),
    ("So the answer is [1440].", "1440"),
    ("The answer is .75 of the cake", "0.75"),
    ("The result is 007.", "7"),
    ("The answer would be 8 hours", "8"),
    ("**Final answer:** 64", "64"),
]


@pytest.mark.parametrize(("text", "expected"), OUTPUTS, ids=range(len(OUTPUTS)))
def test_extract_answer_table(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_table_is_large_enough() -> None:
    assert len(OUTPUTS) >= 25


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$1,250", "1250"),
        ("1,234", "1234"),
        ("12.50", "12.5"),
        ("12.0", "12"),
        ("12.00", "12"),
        ("45%", "45"),
        ("3/4", "3/4"),
        ("-3/4", "-3/4"),
        ("\\frac{3}{4}", "3/4"),
        ("-0.00", "0"),
        ("+5", "5"),
        ("x = 5", "5"),
        ("3.50 dollars", "3.5"),
        ("[1440]", "1440"),
        ("Paris.", "Paris"),
        ("  ", None),
        (None, None),
    ],
)
def test_normalize_answer(raw: str | None, expected: str | None) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("3/4", "0.75", True),
        ("0.75", "3/4", True),
        ("-3/4", "-0.75", True),
        ("-7", "7", False),
        ("$1,250", "1250.00", True),
        ("12.5", "12.50", True),
        ("45%", "45", True),
        ("1/3", "0.333", False),
        ("1/3", "0.3333333333", True),
        ("B", " b ", True),
        ("Paris", "London", False),
        ("42", "forty-two", False),
        (None, "42", False),
        ("42", None, False),
        (None, None, False),
    ],
)
def test_answers_equal(a: str | None, b: str | None, equal: bool) -> None:
    assert answers_equal(a, b) is equal


def test_answers_equal_rel_tol() -> None:
    assert not answers_equal("100", "100.5")
    assert answers_equal("100", "100.5", rel_tol=0.01)


def test_parse_number() -> None:
    assert parse_number("-3/4") == -0.75
    assert parse_number("1/0") is None
    assert parse_number("12 apples and 3 pears") is None
    assert parse_number("x = [[2]\n [1]]") is None


def test_find_numbers_skips_words_and_exponents() -> None:
    assert find_numbers("x1 + x_2 = 10^{3} and cm^2, 1,2,3") == ["10", "1", "2", "3"]
    assert find_numbers("from 15-3=12") == ["15", "3", "12"]


def test_large_integers_compare_exactly() -> None:
    # 415 * 336 * -940 - 590 + 330 + 846 (a basic_arithmetic item): within 1e-6
    # relative of its neighbour, yet a different answer.
    assert not answers_equal("-131073014", "-131073013")
    assert answers_equal("-131,073,014", "-131073014.00")
    assert not answers_equal("1687.5", "1687.6")
