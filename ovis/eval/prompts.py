"""Prompts as VLMEvalKit builds them for each task kind (replies are read by :mod:`ovis.eval.extract`).

Multiple choice: ``Hint: ...`` (if any), ``Question: ...``, ``Options:`` with ``A. text`` lines,
then ``Please select the correct answer from the options above.`` Yes/no: the question, with
``Please answer yes or no.`` appended unless it already asks that. VQA: the question, then
``Answer the question using a single word or phrase.``

Images go first, one ``<image>`` each, unless the question places them with MMMU's
``<image 1>`` tags.

Video multiple choice (Video-MME's prompt, joined as VLMEvalKit's Ovis2 wrapper joins a video
question: the frames' ``<image>`` markers, then each text piece stripped, one per line): ``<video>``
(the runner puts one ``<image>`` per frame there), ``These are the frames of a video. Select the best
answer ... Respond with only the letter (A, B, C, or D) of the correct option.`` (the letters the
question has), ``Question: ...``, one ``A. text`` line per option, ``Answer:``.
"""

from __future__ import annotations

import re

from ovis.eval.tsv import Item, Kind
from ovis.interfaces.video import VIDEO_MARKER

MCQ_INSTRUCTION = "Please select the correct answer from the options above. \n"
YESNO_INSTRUCTION = " Please answer yes or no."
VQA_INSTRUCTION = "\nAnswer the question using a single word or phrase."
VIDEO_INSTRUCTION = ("These are the frames of a video. Select the best answer to the following multiple-choice "
                     "question based on the video. Respond with only the letter ({letters}) of the correct option.")
_IMAGE_TAG = re.compile(r"<image (\d+)>")


def build_prompt(item: Item, kind: Kind, style: str = "vlmevalkit") -> tuple[str, list[bytes]]:
    """The user message (with ``<image>`` markers) and its images in marker order.

    ``style="plain"`` sends the bare question (no hint, options or instruction): for models
    trained without VLMEvalKit's instructions, such as the quick-start's; answers are still read
    by the same rules (an option's text counts as choosing it).
    """
    if style not in ("vlmevalkit", "plain"):
        raise ValueError(f"prompt style must be vlmevalkit or plain, got {style!r}")
    if item.video is not None:
        return video_prompt(item, style), []
    if style == "plain":
        return _place_images(item.question, item.images)
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


def video_prompt(item: Item, style: str = "vlmevalkit") -> str:
    """A video question's user message, with one ``<video>`` marker where its frames go."""
    if style == "plain":
        return f"{VIDEO_MARKER}\n{item.question}"
    letters = list(item.options)
    listed = " or ".join(letters) if len(letters) <= 2 else ", ".join(letters[:-1]) + f", or {letters[-1]}"
    lines = [VIDEO_MARKER, VIDEO_INSTRUCTION.format(letters=listed)]
    if item.hint:
        lines.append(f"Hint: {item.hint}")
    lines += [f"Question: {item.question}", *(f"{k}. {v}" for k, v in item.options.items()), "Answer:"]
    return "\n".join(lines)
