"""Prompts as VLMEvalKit builds them for each task kind, and rule-based answer extraction.

Multiple choice: ``Hint: ...`` (if any), ``Question: ...``, ``Options:`` with ``A. text`` lines,
then ``Please select the correct answer from the options above.`` Yes/no: the question, with
``Please answer yes or no.`` appended unless it already asks that. VQA: the question, then
``Answer the question using a single word or phrase.``

Images go first, one ``<image>`` each, unless the question places them with MMMU's
``<image 1>`` tags. Extraction never guesses: a reply that names no option (or two), or both or
neither of yes/no, is ``None`` and is counted as unmatched.
"""

from __future__ import annotations

import re

from ovis.eval.tsv import Item, Kind

MCQ_INSTRUCTION = "Please select the correct answer from the options above. \n"
YESNO_INSTRUCTION = " Please answer yes or no."
VQA_INSTRUCTION = "\nAnswer the question using a single word or phrase."
_IMAGE_TAG = re.compile(r"<image (\d+)>")


def build_prompt(item: Item, kind: Kind, style: str = "vlmevalkit") -> tuple[str, list[bytes]]:
    """The user message (with ``<image>`` markers) and its images in marker order.

    ``style="plain"`` sends the bare question (no hint, options or instruction): for models
    trained without VLMEvalKit's instructions, such as the quick-start's; answers are still read
    by the same rules (an option's text counts as choosing it).
    """
    if style == "plain":
        return _place_images(item.question, item.images)
    if style != "vlmevalkit":
        raise ValueError(f"prompt style must be vlmevalkit or plain, got {style!r}")
    if kind == "mcq":
        text = f"Hint: {item.hint}\n" if item.hint else ""
        text += f"Question: {item.question}\n"
        if item.options:
            text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in item.options.items()) + MCQ_INSTRUCTION
    elif kind == "yesno":
        text = item.question
        if "yes or no" not in text.lower():
            text += YESNO_INSTRUCTION
    else:
        text = item.question + VQA_INSTRUCTION
    return _place_images(text, item.images)


def _place_images(text: str, images: list[bytes]) -> tuple[str, list[bytes]]:
    tags = [int(n) for n in _IMAGE_TAG.findall(text)]
    if tags and all(1 <= n <= len(images) for n in tags):
        ordered = [images[n - 1] for n in tags]
        unused = [img for k, img in enumerate(images, start=1) if k not in tags]
        text = _IMAGE_TAG.sub("<image>", text)
        return "<image>\n" * len(unused) + text, unused + ordered
    return "<image>\n" * len(images) + text, list(images)


# -- extraction -------------------------------------------------------------------------------------
def extract_choice(prediction: str, options: dict[str, str]) -> str | None:
    """The option letter a free-text reply chooses, or None when it is not clear."""
    text = prediction.strip()
    if not text:
        return None
    letters = "".join(options)
    cls = f"[{letters}]"
    rules = [
        rf"^\(?({cls})\)?(?:[.:)\s]|$)",  # "B", "B.", "(B)", "B) text", "B: text"
        rf"(?:answer|option|choice)\s*(?:is|:)?\s*\(?({cls})\)?(?![A-Za-z])",  # "the answer is B"
    ]
    lone = set(re.findall(rf"(?<![A-Za-z]){cls}(?![A-Za-z])", text))  # capital option letters as words
    for rule in rules:
        match = re.search(rule, text, flags=re.IGNORECASE if rule is rules[1] else 0)
        if match:
            letter = match.group(1).upper()
            # "A or B" names two options: not a choice.
            return letter if lone <= {letter} else None
    # A lone capital letter of the options anywhere ("I think C.") - only if exactly one appears.
    if len(lone) == 1:
        return lone.pop()
    if len(lone) > 1:
        return None
    # The text of exactly one option.
    lowered = _norm(text)
    hits = [k for k, v in options.items() if _norm(v) and _norm(v) in lowered]
    if len(hits) > 1:  # prefer the longest if one contains the others ("red" vs "dark red")
        longest = max(hits, key=lambda k: len(options[k]))
        if all(_norm(options[k]) in _norm(options[longest]) for k in hits):
            hits = [longest]
    return hits[0] if len(hits) == 1 else None


def extract_yes_no(prediction: str) -> str | None:
    words = set(re.findall(r"[a-z]+", prediction.lower()))
    yes, no = "yes" in words, "no" in words
    if yes == no:
        return None
    return "yes" if yes else "no"


_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}


def _norm(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    text = re.sub(r"[^\w\s.%-]", " ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # drop periods that are not decimal points
    words = [_NUMBER_WORDS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_answers(answer: str) -> list[str]:
    """Accepted answers: a JSON list, or several separated by ``|``, or one."""
    answer = answer.strip()
    if answer.startswith("["):
        try:
            import json

            values = json.loads(answer)
            return [str(v) for v in values]
        except ValueError:
            pass
    return [a for a in (p.strip() for p in answer.split("|")) if a] or [answer]


def _number(text: str) -> float | None:
    match = re.fullmatch(r"-?\d+(?:\.\d+)?%?", text.strip())
    if not match:
        return None
    value = float(text.strip().rstrip("%"))
    return value


def vqa_match(prediction: str, answers: list[str], *, relaxed: bool = False) -> bool:
    """Exact match after normalisation (case, articles, punctuation, number words); ``relaxed``
    also accepts numbers within 5% (ChartQA's rule) and a reply that contains the answer as words."""
    pred = _norm(prediction)
    for answer in answers:
        gold = _norm(answer)
        if pred == gold:
            return True
        if relaxed:
            p, g = _number(pred), _number(gold)
            if p is not None and g is not None:  # numbers compare as numbers only
                if p == g or (g != 0 and abs(p - g) / abs(g) <= 0.05):
                    return True
                continue
            if gold and re.search(rf"(?<!\w){re.escape(gold)}(?!\w)", pred):
                return True
    return False
