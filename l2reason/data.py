"""A few built-in grade-school math problems (written for l2reason) for demos and calibration.

The evaluation harness uses real datasets (:mod:`l2reason.eval.datasets`);
these are only a small, fixed, offline set so that ``l2reason demo`` and
``l2reason calibrate`` work out of the box.
"""

from __future__ import annotations

SYSTEM_PROMPT = "You are a careful math tutor. Reason step by step, then give the final answer as 'The answer is N.'"

# (question, answer)
PROBLEMS: list[tuple[str, str]] = [
    ("A baker makes 12 muffins per tray and bakes 7 trays. She sells 59 muffins. How many muffins are left?", "25"),
    (
        "Tom has 3 boxes with 18 marbles each. He gives 14 marbles to his sister. How many marbles does he have now?",
        "40",
    ),
    ("A bus carries 42 people. At the first stop 15 get off and 9 get on. How many people are on the bus?", "36"),
    ("Mia reads 23 pages a day for 6 days and then 17 pages on the seventh day. How many pages did she read?", "155"),
    ("A farmer has 4 fields with 35 apple trees each. 28 trees are cut down. How many trees remain?", "112"),
    (
        "Pencils cost 3 dollars per pack. Sam buys 8 packs and pays with a 50 dollar bill. How much change does he get?",
        "26",
    ),
    ("A school has 9 classes of 27 students. 31 students are absent today. How many are present?", "212"),
    ("Lena saves 15 dollars a week for 12 weeks and then spends 47 dollars. How much does she have left?", "133"),
    ("A train travels 64 km per hour for 3 hours and then 48 km per hour for 2 hours. How far does it go?", "288"),
    ("There are 144 eggs packed equally into 12 cartons. 5 cartons are sold. How many eggs are left?", "84"),
    ("A garden has 6 rows of 14 tulips. Rabbits eat 19 tulips. How many tulips are left?", "65"),
    ("Ben runs 5 km every weekday and 8 km on each weekend day. How many km does he run in a week?", "41"),
    ("A shop had 230 shirts, sold 87 on Monday and 64 on Tuesday. How many shirts are left?", "79"),
    (
        "Each ticket costs 13 dollars. A group of 7 adults and 5 children buys tickets; children pay half. What is the total?",
        "123.5",
    ),
    (
        "A tank holds 500 liters. It is filled at 35 liters per minute for 9 minutes. How many liters are still missing?",
        "185",
    ),
    ("Ana has twice as many stickers as Joe. Joe has 37 stickers. How many stickers do they have together?", "111"),
]
