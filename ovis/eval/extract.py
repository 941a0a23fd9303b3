"""Reading a model's free-text reply: which option it chose, yes or no, or a short answer.

Multiple choice follows the order and guards of VLMEvalKit's ``can_infer`` (vlmeval/utils/matching_util.py):

1. an option letter standing alone as a token, when it is the only one and among the reply's last
   four tokens (so a letter deep in an explanation is not taken for a choice);
2. ``answer is X``;
3. the text of exactly one option, in a reply at most twice as long as all option texts together.

ovis differs on purpose where VLMEvalKit's rules misread (each case is in the agreement table,
tests/eval_agreement_table.py, and docs/evaluation.md): a capital ``A`` used as an article
("A square.") or ``I`` as a pronoun is not an option letter; a letter that opens the reply in
answer form (``B.``, ``(B)``, ``B\\n...``) counts; explicit markers count (``option b``,
``Answer: c``, ``<answer>B</answer>``, ``答案是B``), and a reply that is only a lowercase letter;
option text matches whole words only ("starving" does not choose "star"); ``answer is`` needs the
letter to stand alone ("the answer is blue" does not choose B).

Extraction never guesses: a reply that names no option (or two), or both or neither of yes/no,
reads as ``None`` and is counted as unmatched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

# Refusals and API failures name no option (VLMEvalKit reads most of them as its "Z": no choice).
_REFUSALS = ("failed to obtain answer via api", "sorry, i can't help with images of people",
             "i can't process this file", "i'm sorry, but without the image provided", "cannot determine the answer")
_SEPARATORS = ".()[],:;!*#{}"  # characters that split tokens, as in VLMEvalKit
# After a capital A or I, these words keep it a letter ("A is right", "A and B"); any other lowercase
# word makes it an article or a pronoun ("A square", "I think").
_LETTER_FOLLOWERS = frozenset(
    "is was seems appears would should could must might can will matches fits looks and or nor but vs versus "
    "because since as then".split()
)
# Case-insensitive marker words; the letter after them keeps its case (a lowercase one is checked apart).
_MARKER = r"(?i:answer|option|choice)\s*(?:(?i:is)|:)?\s*"


def _is_word_use(text: str, start: int, letter: str) -> bool:
    """Whether the capital ``A``/``I`` at ``start`` is an English word, not an option letter."""
    if letter not in "AI":
        return False
    after = text[start + 1:]
    if letter == "I" and re.match(r"['’](?:m|d|ll|ve)\b", after):
        return True
    follower = re.match(r"[ \t]+([a-z]+)", after)
    return bool(follower) and follower.group(1) not in _LETTER_FOLLOWERS


def _lone_letters(text: str, letters: str) -> list[tuple[int, str]]:
    """(token position, letter) for every option letter standing alone as a token, articles and
    pronouns left out. Tokens are split at whitespace and VLMEvalKit's separator characters."""
    found = []
    position = 0
    for match in re.finditer(rf"[^\s{re.escape(_SEPARATORS)}]+", text):
        token = match.group()
        if token in letters and not _is_word_use(text, match.start(), token):
            found.append((position, token))
        position += 1
    return found


def _token_count(text: str) -> int:
    return len(re.findall(rf"[^\s{re.escape(_SEPARATORS)}]+", text))


def _explicit(text: str, letters: str) -> str | None:
    """A letter given in answer form: markers, tags, an opening ``B.``, or the reply being one letter."""
    cls = f"[{letters}{letters.lower()}]"
    patterns = [
        rf"<answer>\s*\(?({cls})\)?\s*</answer>",  # reasoning-model tags
        rf"答案(?:是|为|:|：)\s*\(?({cls})\)?",  # Chinese "the answer is"
        rf"^\(?({cls})\)?[.:]?$",  # the whole reply is one letter, any case: "b", "(c)", "C."
        rf"^\(?([{letters}])\)?(?:[.:)]|\s*\n|$)",  # opens with the letter: "B.", "(B) blue", "B\nA circle"
        rf"^\(({cls})\)",  # "(c) green"
        # "the answer is B", "Answer: c", "option b", "choice (C)": a lowercase letter only when
        # nothing but punctuation follows ("the answer is a square" is an article)
        rf"\b{_MARKER}\(?([{letters}])\)?(?![A-Za-z])",
        rf"\b{_MARKER}\(?([{letters.lower()}])\)?(?:[.,;:!)]|\s*$)",
    ]
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return match.group(1).upper()
    return None


def _clean(prediction: str) -> str:
    # Markdown emphasis and headings carry no meaning here: "**B**", "### Answer: B".
    return re.sub(r"[*#`]+", "", prediction).strip()


def extract_choice(prediction: str, options: Mapping[str, str]) -> str | None:
    """The option letter a free-text reply chooses, or None when it is not clear."""
    text = _clean(prediction)
    if not text or any(refusal in text.lower() for refusal in _REFUSALS):
        return None
    letters = "".join(options)
    lone = _lone_letters(text, letters)
    # 1. one option letter among the last four tokens (VLMEvalKit's guard)
    if len({letter for _, letter in lone}) == 1 and lone[0][0] >= _token_count(text) - 4:
        return lone[0][1]
    # 2. answer form, including VLMEvalKit's "answer is X" fallback
    explicit = _explicit(text, letters)
    if explicit is not None:
        named = {letter for _, letter in lone} - {explicit}
        # "A or B" names two options; "The answer is B. A blue circle..." does not ("A" is an article)
        if not named or _explicit_is_marked(text, letters):
            return explicit
        return None
    if lone:
        return None  # a lone letter deep in a long reply, or two letters: not a choice
    # 3. the text of exactly one option
    return _choice_by_text(text, options)


# Video-MME's own reading (vlmeval/dataset/utils/videomme.py, extract_characters_regex), re-stated: the
# answer prefixes are deleted, then the first capital option letter anywhere is the choice. Its list
# misses two commas, so two of its "prefixes" are pairs run together; they are kept as it has them.
_VIDEOMME_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                      "The best option isThe correct option is", "Best answer:Best option:", "Answer:", "Option:")


def videomme_choice(prediction: str, letters: str = "ABCD") -> str | None:
    """The option letter Video-MME's scoring reads from a reply (None: none). Cruder than
    :func:`extract_choice` ("Clearly C" reads as C, from "Clearly"), reported beside it so scores
    compare with Video-MME's published ones."""
    text = prediction.strip()
    for prefix in _VIDEOMME_PREFIXES:
        text = text.replace(prefix, "")
    found = re.search(f"[{re.escape(letters)}]", text)
    return found[0] if found else None


def _explicit_is_marked(text: str, letters: str) -> bool:
    """Whether the reply states its choice with a marker (which outranks other letters it mentions)."""
    return bool(re.search(rf"\b{_MARKER}\(?[{letters}]\)?(?![A-Za-z])|<answer>|答案", text))


def _choice_by_text(text: str, options: Mapping[str, str]) -> str | None:
    total = sum(len(str(v)) for v in options.values())
    if len(text) > 2 * total:  # VLMEvalKit's guard: long replies mention options without choosing
        return None
    reply = normalise(text)
    hits = [k for k, v in options.items() if _has_words(reply, normalise(v))]
    if len(hits) > 1:  # prefer the longest if one contains the others ("green" vs "dark green")
        longest = max(hits, key=lambda k: len(options[k]))
        if all(_has_words(normalise(options[longest]), normalise(options[k])) for k in hits):
            hits = [longest]
    return hits[0] if len(hits) == 1 else None


def _has_words(text: str, words: str) -> bool:
    """``words`` appear in ``text`` as whole words (a plural ending allowed: "triangles", not "starving")."""
    return bool(words) and re.search(rf"(?<!\S){re.escape(words)}(?:s|es)?(?!\S)", text) is not None


_YES = frozenset({"yes", "yeah", "yep", "yup"})
_NO = frozenset({"no", "nope", "nah"})


def extract_yes_no(prediction: str) -> str | None:
    """``yes`` or ``no`` when the reply has a word of exactly one of them (VLMEvalKit's rule, with
    colloquial forms added and markdown or ``Answer:No`` read through), else None."""
    words = set(re.findall(r"[a-z]+", prediction.lower()))
    yes, no = bool(words & _YES), bool(words & _NO)
    if yes == no:
        return None
    return "yes" if yes else "no"


# -- short answers ---------------------------------------------------------------------------------
_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}


def normalise(text: str) -> str:
    """Lowercase words without punctuation or articles, number words as digits, ``1,000`` as ``1000``."""
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
            return [str(v) for v in json.loads(answer)]
        except ValueError:
            pass
    return [a for a in (p.strip() for p in answer.split("|")) if a] or [answer]


def _number(text: str) -> float | None:
    if not re.fullmatch(r"-?\d+(?:\.\d+)?%?", text.strip()):
        return None
    return float(text.strip().rstrip("%"))


def vqa_match(prediction: str, answers: list[str], *, relaxed: bool = False) -> bool:
    """Exact match after normalisation (case, articles, punctuation, number words); ``relaxed``
    also accepts numbers within 5% (ChartQA's rule) and a reply that contains the answer as words."""
    pred = normalise(prediction)
    for answer in answers:
        gold = normalise(answer)
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
