"""ovis's answer extraction on a hand-written table of realistic replies, and its agreement with
VLMEvalKit's published rules; the rate is the one docs/evaluation.md and the README report."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovis.eval.extract import extract_choice, extract_yes_no
from tests.eval_agreement_table import OPTIONS, SAME, TABLE
from tests.vlmevalkit_rules import vlmevalkit_choice, vlmevalkit_yes_no

REPO = Path(__file__).resolve().parents[1]


def ovis_reading(options: str, reply: str) -> str | None:
    return extract_yes_no(reply) if options == "yesno" else extract_choice(reply, OPTIONS[options])


def vlmevalkit_reading(options: str, reply: str) -> str | None:
    return vlmevalkit_yes_no(reply) if options == "yesno" else vlmevalkit_choice(reply, OPTIONS[options])


def agreement() -> tuple[int, int]:
    same = sum(ovis_reading(o, r) == vlmevalkit_reading(o, r) for o, r, *_ in TABLE)
    return same, len(TABLE)


def test_the_table_is_large_and_varied():
    assert len(TABLE) >= 100
    assert len({reply for _, reply, *_ in TABLE}) == len(TABLE)  # no duplicates
    assert sum(o == "yesno" for o, *_ in TABLE) >= 30


@pytest.mark.parametrize("options, reply, expected, vlmevalkit, why", TABLE)
def test_reading(options, reply, expected, vlmevalkit, why):
    assert ovis_reading(options, reply) == expected
    # the table's record of VLMEvalKit's reading is its rules' reading, and every difference says why
    theirs = expected if vlmevalkit == SAME else vlmevalkit
    assert vlmevalkit_reading(options, reply) == theirs
    assert bool(why) == (theirs != expected)


def test_the_documented_agreement_rate_is_the_measured_one():
    same, total = agreement()
    stated = f"{same} of {total} replies ({100 * same / total:.1f}%)"
    for doc in (REPO / "docs" / "evaluation.md", REPO / "README.md"):
        assert stated in doc.read_text(encoding="utf-8"), f"{doc.name} should state {stated}"
