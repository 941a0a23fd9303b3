"""VLMEvalKit's rule-based readings, re-stated from its published rules (written for ovis's tests,
not taken from VLMEvalKit's code), to measure how far ovis's extraction agrees with them.

Multiple choice (vlmeval/utils/matching_util.py, ``can_infer``): ``can_infer_option`` - an API
failure reads nothing; listed refusals read as "Z"; with ``.()[],:;!*#{}`` turned into spaces and
the reply split at whitespace, exactly one option letter among the tokens (case-sensitive) is the
choice if its first occurrence is among the last four tokens; no letter but a "Z" token reads "Z";
else ``(correct )?answer is **X**`` (case-insensitive, A-D only). Then ``can_infer_text``: in a
reply no longer than twice the option texts together, the one option whose lowercased text occurs
in the lowercased reply. "Z" means no choice: it is reported here as None, like ovis's unmatched.

Yes/no (vlmeval/dataset/utils/yorn.py, ``YOrN_Extraction``): lowercase, VLMEvalKit's
``process_punctuation`` (each of ``;/[]"{}()=+\\_-><@`,?!`` deleted where a space touches it - or
everywhere if the reply has a digit-comma-digit - else replaced by a space; periods not between
digits deleted), split at whitespace; "yes" without "no" is yes, "no" without "yes" is no.
"""

from __future__ import annotations

import re

_API_FAILURE = "Failed to obtain answer via API"
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_VERBOSE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def option_reading(reply: str, options: dict[str, str]) -> str | bool:
    """``can_infer_option``: a letter, "Z", or False (no reading: go on to the text)."""
    if _API_FAILURE in reply:
        return False
    if any(refusal in reply for refusal in _REFUSALS):
        return "Z"
    spaced = reply
    for ch in ".()[],:;!*#{}":
        spaced = spaced.replace(ch, " ")
    tokens = spaced.split()
    present = [letter for letter in options if letter in tokens]
    if len(present) == 1 and tokens.index(present[0]) > len(tokens) - 5:
        return present[0]
    if not present and "Z" in tokens:
        return "Z"
    verbose = _VERBOSE.search(reply)
    if verbose and verbose.group(1).upper() in options:
        return verbose.group(1).upper()
    return False


def text_reading(reply: str, options: dict[str, str]) -> str | bool:
    """``can_infer_text``."""
    lowered = reply.lower()
    if len(lowered) > 2 * sum(len(str(v)) for v in options.values()):
        return False
    found = [k for k, v in options.items() if str(v).lower() in lowered]
    return found[0] if len(found) == 1 else False


def vlmevalkit_choice(reply: str, options: dict[str, str]) -> str | None:
    reading = option_reading(reply, options) or text_reading(reply, options)
    return None if reading in (False, "Z") else reading


def _process_punctuation(text: str) -> str:
    out = text
    for p in [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]:
        if (p + " " in text or " " + p in text) or re.search(r"(\d)(,)(\d)", text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return re.sub(r"(?<!\d)\.(?!\d)", "", out)


def vlmevalkit_yes_no(reply: str) -> str | None:
    words = _process_punctuation(reply.lower()).split()
    if "yes" in words and "no" not in words:
        return "yes"
    if "no" in words and "yes" not in words:
        return "no"
    return None
