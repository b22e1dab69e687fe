"""Final-answer extraction and comparison: what the voting selectors group by.

Majority vote, the ℓ2-weighted vote, the self-certainty Borda vote and the
DeepConf vote all group candidates by their final answer, so this module sits
with the selectors (below the backends): :func:`l2reason.select.select_result`
uses :func:`extract_answer` unless the caller passes its own extractor. It is
generic (math word problems: numbers, fractions, LaTeX, answer markers);
dataset-specific parsing stays in the evaluation datasets.

A small model's chain of thought ends in many styles: ``\\boxed{42}``, ``The
answer is 42.``, ``**Answer:** $1,250``, ``#### -7``, a DSPy output field
``[[ ## answer ## ]]\\n12``, or just a sentence whose last number is the answer.
:func:`extract_answer` tries, in order:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces are matched);
2. the last answer marker: ``answer is X``, ``Answer: X``, ``#### X``, or a DSPy
   ``[[ ## answer ## ]]`` field, whose text (up to the end of its sentence)
   holds a number;
3. the last number anywhere in the text.

Every candidate goes through :func:`normalize_answer`, which turns it into a
canonical numeric string: ``$1,250.00`` -> ``1250``, ``12.50`` -> ``12.5``,
``45%`` -> ``45``, ``\\frac{3}{4}`` -> ``3/4`` (fractions stay fractions), and
``x = 5`` -> ``5`` (the part after the last ``=``). :func:`answers_equal` then
compares two answers numerically when both hold exactly one number (so ``3/4``
equals ``0.75``), else as case-insensitive strings.

Not handled, on purpose: mixed numbers (``1 1/2`` reads as ``1/2``), scientific
notation, and vectors (the evaluation datasets parse their own answer formats,
such as linear-equation vectors).
"""

from __future__ import annotations

import logging
import math
import re
from fractions import Fraction

__all__ = [
    "answers_equal",
    "extract_answer",
    "find_numbers",
    "normalize_answer",
    "parse_number",
]

logger = logging.getLogger(__name__)

# A number token. The look-behinds keep digits that belong to a word (``x1``,
# ``x_2``), a decimal (``a.5``) or an exponent (``cm^2``, ``10^{3}``) out.
# Thousands groups need exactly three digits (``1,234``); ``1,2,3`` is a list.
_NUMBER = re.compile(
    r"(?<![\w.^])(?<!\^\{)"
    r"(?P<num>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+)(?!\d|\.\d))?"
)
# Answer markers, each ending where the answer text starts. "Answer:" counts only
# at the start of a line (after markdown) or as "final answer:", so an opening
# "To answer this: ..." is not taken for the result.
_MARKERS = (
    re.compile(r"\[\[\s*##\s*answer\s*##\s*\]\]", re.IGNORECASE),  # DSPy output field
    re.compile(r"####"),  # GSM8K style
    re.compile(r"\banswer\s+(?:is|was|would\s+be|should\s+be)\b[\s*_:]*", re.IGNORECASE),
    re.compile(
        r"(?:^|\n)[ \t*#_>-]*(?:the\s+)?(?:final\s+)?answer\s*[*_]*\s*[:=][\s*_]*",
        re.IGNORECASE,
    ),
    re.compile(r"\bfinal\s+answer\s*[*_]*\s*[:=][\s*_]*", re.IGNORECASE),
)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
# An answer span ends at a period that is not a decimal point, at a newline, or
# at the next DSPy field.
_SPAN_END = re.compile(r"(?<!\d)\.(?!\d)|\.(?=\s)|\n|\[\[")
# LaTeX spacing and delimiters, and what each becomes.
_LATEX_TOKENS = {
    "\\!": "",
    "\\,": "",  # thin space, also a thousands separator: 1\,000
    "\\;": " ",
    "\\left": "",
    "\\right": "",
    "\\$": "$",
    "\\%": "%",
    "\\(": " ",
    "\\)": " ",
    "\\[": " ",
    "\\]": " ",
    "{,}": ",",  # LaTeX thousands separator: 1{,}250
    "\u2212": "-",  # Unicode minus
}


def _clean_latex(text: str) -> str:
    """Rewrite the LaTeX that hides numbers: ``\\frac{a}{b}`` -> ``a/b`` and so on."""
    prev = None
    while prev != text:  # nested fractions rewrite from the inside out
        prev, text = text, _FRAC.sub(r"\1/\2", text)
    text = _TEXT.sub(r" \1 ", text)
    for token, repl in _LATEX_TOKENS.items():
        text = text.replace(token, repl)
    return text


def _canonical_number(num: str, den: str | None) -> str:
    """Canonical text of a number token: no commas, no ``+``, no trailing zeros."""
    num = num.replace(",", "").lstrip("+")
    sign = "-" if num.startswith("-") else ""
    num = num.lstrip("-")
    whole, _, frac = num.partition(".")
    frac = frac.rstrip("0")
    whole = str(int(whole)) if whole else "0"
    text = f"{whole}.{frac}" if frac else whole
    if den is not None:
        text = f"{text}/{int(den)}"
    if text == "0":
        sign = ""  # "-0" and "-0.00" are plain 0
    return sign + text


def find_numbers(text: str) -> list[str]:
    """All number tokens in ``text``, canonicalised, in order of appearance.

    Args:
        text: any text; LaTeX fractions are read as ``a/b``.

    Example:
        >>> find_numbers("She paid $1,250.00 for 3/4 of it, x1 = 2")
        ['1250', '3/4', '2']
    """
    text = _clean_latex(text)
    return [_canonical_number(m["num"], m["den"]) for m in _NUMBER.finditer(text)]


def normalize_answer(s: str | None) -> str | None:
    """Canonical form of a short answer string.

    The part after the last ``=`` is kept; its first number is returned in
    canonical form (``$1,250.00`` -> ``1250``, ``12.50`` -> ``12.5``, ``45%``
    -> ``45``, ``-0.5`` -> ``-0.5``, ``\\frac{3}{4}`` -> ``3/4``). Text with no
    number comes back stripped of spaces, ``$`` and a final period; empty text
    gives ``None``.

    Args:
        s: the answer text (a gold label or an extracted span).

    Example:
        >>> normalize_answer("$1,250.00 dollars")
        '1250'
        >>> normalize_answer("x = \\\\frac{3}{4}")
        '3/4'
        >>> normalize_answer("Paris.")
        'Paris'
    """
    if s is None:
        return None
    text = _clean_latex(str(s))
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    numbers = find_numbers(text)
    if numbers:
        return numbers[0]
    text = " ".join(text.replace("$", " ").split()).rstrip(".").strip()
    return text or None


def _parse_fraction(s: str | None) -> Fraction | None:
    """The exact value of ``s`` when it holds exactly one number, else ``None``."""
    if s is None:
        return None
    numbers = find_numbers(s)
    if len(numbers) != 1:
        return None
    num, _, den = numbers[0].partition("/")
    if den and int(den) == 0:
        return None
    return Fraction(num) / (int(den) if den else 1)


def parse_number(s: str | None) -> float | None:
    """The value of ``s`` when it holds exactly one number, else ``None``.

    Fractions are divided (``3/4`` -> 0.75); units and words around the number
    are ignored; a zero denominator gives ``None``.

    Args:
        s: an answer string.

    Example:
        >>> parse_number("-3/4")
        -0.75
        >>> parse_number("12 apples and 3 pears") is None
        True
    """
    value = _parse_fraction(s)
    return None if value is None else float(value)


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` in ``text``, braces balanced."""
    found = []
    for m in _BOXED.finditer(text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append(text[start:i])
                break
        else:  # unclosed (truncated output): take the rest
            found.append(text[start:])
    return found


def _marker_answer(text: str) -> str | None:
    """The answer after the last answer marker that is followed by a number."""
    hits = sorted(
        ((m.start(), m.end()) for pat in _MARKERS for m in pat.finditer(text)),
        reverse=True,
    )
    for _, end in hits:
        rest = text[end:].lstrip()
        stop = _SPAN_END.search(rest)
        answer = normalize_answer(rest[: stop.start()] if stop else rest)
        if answer is not None and find_numbers(answer):
            return answer
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer of a model output, as a normalised string, or ``None``.

    Priority: the last ``\\boxed{...}``; then the last answer marker (``answer
    is X``, ``Answer: X``, ``#### X``, DSPy ``[[ ## answer ## ]]``) followed by a
    number; then the last number in the text.

    Args:
        text: the model's full output (chain of thought included).

    Example:
        >>> extract_answer("12 x 2 = 24, so the answer is 24 apples.")
        '24'
        >>> extract_answer("Thus $\\\\boxed{\\\\frac{3}{4}}$")
        '3/4'
        >>> extract_answer("Let me think step by step about") is None
        True
    """
    if not text:
        return None
    boxed = [b for b in _boxed_contents(text) if b.strip()]
    if boxed:
        return normalize_answer(boxed[-1])
    marked = _marker_answer(text)
    if marked is not None:
        return marked
    numbers = find_numbers(text)
    if numbers:
        return numbers[-1]
    logger.debug("no answer found in %d chars of output", len(text))
    return None


def answers_equal(a: str | None, b: str | None, rel_tol: float = 1e-6) -> bool:
    """Whether two answers agree.

    Numeric comparison when both hold exactly one number: exact first (``3/4`` ==
    ``0.75``), then, unless both are integers (which must match exactly, however
    large), ``math.isclose`` with ``rel_tol`` (``1/3`` == ``0.3333333333``); otherwise
    case-insensitive comparison of the stripped strings. ``None`` equals nothing,
    not even ``None``.

    Args:
        a: first answer (e.g. extracted from the model's output).
        b: second answer (e.g. the gold label).
        rel_tol: relative tolerance of the numeric comparison of non-integers.

    Example:
        >>> answers_equal("3/4", "0.75"), answers_equal("$1,250", "1250.00")
        (True, True)
        >>> answers_equal(None, None)
        False
    """
    if a is None or b is None:
        return False
    x, y = _parse_fraction(a), _parse_fraction(b)
    if x is not None and y is not None:
        if x == y:
            return True
        if x.denominator == 1 and y.denominator == 1:
            return False  # integers compare exactly: 130972810 != 130972811
        return math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=1e-12)
    return a.strip().casefold() == b.strip().casefold()
