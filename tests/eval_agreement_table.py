"""Realistic model replies with the reading of each written by hand, and VLMEvalKit's reading where its
rules (tests/vlmevalkit_rules.py) read differently, with the reason ovis differs.

Each row: (options, reply, ovis's reading, VLMEvalKit's reading or SAME, why they differ or "").
``options`` names an option set below, or "yesno". A reading of None means "unmatched" (VLMEvalKit's
"Z" and "Unknown" are both read as None here).
"""

from __future__ import annotations

SAME = "same"

OPTIONS = {
    "colours": {"A": "red", "B": "blue", "C": "green", "D": "yellow"},
    "shapes": {"A": "circle", "B": "square", "C": "triangle", "D": "star"},
    "nine": {letter: f"picture {n}" for n, letter in enumerate("ABCDEFGHI", start=1)},
}

LOWERCASE = "a reply that is only a lowercase letter is that letter (VLMEvalKit's tokens are case-sensitive)"
MARKER = "an explicit marker names the letter (VLMEvalKit only knows 'answer is X')"
ARTICLE = "a capital A before a noun is the article, not option A"
PRONOUN = "a capital I before a verb is the pronoun, not option I"
WHOLE_WORDS = "option text must match whole words (VLMEvalKit matches substrings)"
OPENING = ("a reply that opens with the letter in answer form ('B.', '(B)', 'B' and a new line) chooses it; "
           "VLMEvalKit only reads a lone letter among the last four tokens")
VERBOSE_BUG = ("VLMEvalKit's 'answer is X' pattern is case-insensitive without a word boundary, so it reads "
               "the first letter of the next word")
MARKDOWN = "markdown emphasis and 'Answer:No' are read through (VLMEvalKit keeps '*' and ':' inside the word)"
COLLOQUIAL = "colloquial yes/no (yeah, yep, nope, nah) are read"

TABLE: list[tuple[str, str, str | None, str | None, str]] = [
    # -- multiple choice: letters in every dress
    ("colours", "B", "B", SAME, ""),
    ("colours", "(B)", "B", SAME, ""),
    ("colours", "B.", "B", SAME, ""),
    ("colours", "**B**", "B", SAME, ""),
    ("colours", "A", "A", SAME, ""),
    ("colours", "D", "D", SAME, ""),
    ("colours", "A. red", "A", SAME, ""),
    ("colours", "B) blue", "B", SAME, ""),
    ("colours", "(B) blue", "B", SAME, ""),
    ("colours", "B: blue", "B", SAME, ""),
    ("colours", "D. yellow", "D", SAME, ""),
    ("colours", "Answer: C) blue", "C", SAME, ""),
    ("colours", "Answer:B", "B", SAME, ""),
    ("colours", "ANSWER: D", "D", SAME, ""),
    ("colours", "### Answer\nB", "B", SAME, ""),
    ("colours", "Option B.", "B", SAME, ""),
    ("colours", "Option (C)", "C", SAME, ""),
    ("colours", "The answer is B", "B", SAME, ""),
    ("colours", "The answer is B. A blue circle is shown.", "B", SAME, ""),
    ("colours", "The answer is (A).", "A", SAME, ""),
    ("colours", "The answer is A.", "A", SAME, ""),
    ("colours", "The correct answer is (D).", "D", SAME, ""),
    ("colours", "The correct answer is **B**.", "B", SAME, ""),
    ("colours", "The correct option is A.", "A", SAME, ""),
    ("colours", "The answer is clearly C.", "C", SAME, ""),
    ("colours", "I think it is B.", "B", SAME, ""),
    ("colours", "I think C is right", "C", SAME, ""),
    ("colours", "I would choose D.", "D", SAME, ""),
    ("colours", "B is correct.", "B", SAME, ""),
    ("colours", "B, because blue.", "B", SAME, ""),
    ("colours", "The image shows a blue circle, so the answer is B.", "B", SAME, ""),
    ("colours", "The circle is green. The answer is C.", "C", SAME, ""),
    ("colours", "The answer is B, not C.", "B", SAME, ""),
    ("colours", "B\nA circle filled with blue.", "B", SAME, ""),
    # -- multiple choice: lowercase letters and explicit markers
    ("colours", "b", "B", None, LOWERCASE),
    ("colours", "(c)", "C", None, LOWERCASE),
    ("colours", "c.", "C", None, LOWERCASE),
    ("colours", "a", "A", None, LOWERCASE),
    ("colours", "answer: c", "C", None, MARKER),
    ("colours", "Option b", "B", None, MARKER),
    ("colours", "<answer>B</answer>", "B", None, MARKER),
    ("colours", "答案是B", "B", None, MARKER),
    ("colours", "答案：C", "C", None, MARKER),
    # -- multiple choice: a letter opening a longer reply
    ("colours", "B. The circle is blue because the light reflects off the paint.", "B", None, OPENING),
    ("colours", "C\nThe square is green, matching the grass around it.", "C", None, OPENING),
    ("colours", "(D) yellow, since the sun is drawn in yellow in the picture.", "D", None, OPENING),
    ("colours", "C is the correct answer because the square is green and nothing else is.", None, SAME, ""),
    ("colours", "It is C, because the circle is clearly blue and large.", None, SAME, ""),
    # -- multiple choice: articles and pronouns
    ("colours", "A square.", None, "A", ARTICLE),
    ("colours", "A blue one.", "B", "A", ARTICLE),
    ("colours", "A red one.", "A", SAME, ""),
    ("shapes", "A triangle.", "C", "A", ARTICLE),
    ("shapes", "A square with a circle inside", None, SAME, ""),
    ("shapes", "It looks like a square.", "B", SAME, ""),
    ("nine", "I think the answer is C.", "C", SAME, ""),
    ("nine", "I believe C.", "C", None, PRONOUN),
    ("nine", "I am fairly sure it is G.", "G", None, PRONOUN),
    ("nine", "I'd say H.", "H", SAME, ""),
    ("nine", "I", "I", SAME, ""),
    ("nine", "picture 4", "D", SAME, ""),
    ("nine", "The answer is I.", "I", SAME, ""),
    # -- multiple choice: option text
    ("colours", "It is blue.", "B", SAME, ""),
    ("colours", "blue", "B", SAME, ""),
    ("colours", "Blue.", "B", SAME, ""),
    ("colours", "BLUE", "B", SAME, ""),
    ("colours", "Blue, definitely blue.", "B", SAME, ""),
    ("colours", "Red", "A", SAME, ""),
    ("colours", "RED", "A", SAME, ""),
    ("colours", "The color is red.", "A", SAME, ""),
    ("colours", "It's green.", "C", SAME, ""),
    ("colours", "green", "C", SAME, ""),
    ("colours", "Green!", "C", SAME, ""),
    ("colours", "dark green", "C", SAME, ""),
    ("colours", "The answer is blue.", "B", SAME, ""),
    ("colours", "The shape is coloured.", None, "A", WHOLE_WORDS),
    ("colours", "It has been rendered in 3D.", None, "A", WHOLE_WORDS),
    ("colours", "Yellowish.", None, "D", WHOLE_WORDS),
    ("shapes", "It is starving.", None, "D", WHOLE_WORDS),
    ("shapes", "star", "D", SAME, ""),
    ("shapes", "Square.", "B", SAME, ""),
    ("shapes", "triangles", "C", SAME, ""),
    ("shapes", "The shape is a triangle, so C.", "C", SAME, ""),
    ("colours", "The answer is a dog.", None, "A", VERBOSE_BUG),
    ("colours", "The answer is dark green.", "C", "D", VERBOSE_BUG),
    # -- multiple choice: no choice, two choices, refusals
    ("colours", "red and blue", None, SAME, ""),
    ("colours", "It is not red, it is blue.", None, SAME, ""),
    ("colours", "The circle is red. It is not blue.", None, SAME, ""),
    ("colours", "Between red and blue, I'd go with blue.", None, SAME, ""),
    ("colours", "A or B", None, SAME, ""),
    ("colours", "Either A or C.", None, SAME, ""),
    ("colours", "Both A and C are plausible, but C fits better.", None, SAME, ""),
    ("colours", "Looking at the options, A is red, B is blue. The circle is blue, so B.", None, SAME, ""),
    ("colours", "no idea", None, SAME, ""),
    ("colours", "", None, SAME, ""),
    ("colours", "Hmm, hard to say.", None, SAME, ""),
    ("colours", "None of the options.", None, SAME, ""),
    ("colours", "There is no correct option here.", None, SAME, ""),
    ("colours", "Z", None, SAME, ""),
    ("colours", "E", None, SAME, ""),
    ("colours", "The answer is E.", None, SAME, ""),
    ("colours", "I'm sorry, I can't tell from this image.", None, SAME, ""),
    ("colours", "Cannot determine the answer", None, SAME, ""),
    ("colours", "Sorry, I can't help with images of people yet.", None, SAME, ""),
    ("colours", "Failed to obtain answer via API.", None, SAME, ""),
    # -- yes / no
    ("yesno", "Yes", "yes", SAME, ""),
    ("yesno", "No", "no", SAME, ""),
    ("yesno", "yes.", "yes", SAME, ""),
    ("yesno", "No.", "no", SAME, ""),
    ("yesno", "YES", "yes", SAME, ""),
    ("yesno", "NO", "no", SAME, ""),
    ("yesno", "Yes!", "yes", SAME, ""),
    ("yesno", "No!", "no", SAME, ""),
    ("yesno", "(Yes)", "yes", SAME, ""),
    ("yesno", '"No"', "no", SAME, ""),
    ("yesno", "Yes\n", "yes", SAME, ""),
    ("yesno", "Yes, there is a dog.", "yes", SAME, ""),
    ("yesno", "No, there is no dog.", "no", SAME, ""),
    ("yesno", "No, it isn't.", "no", SAME, ""),
    ("yesno", "No; the cat is black.", "no", SAME, ""),
    ("yesno", "Yes, the number of dogs is 2, not 3.", "yes", SAME, ""),
    ("yesno", "Yes.\nThe sign says STOP.", "yes", SAME, ""),
    ("yesno", "Yes (the bus is red)", "yes", SAME, ""),
    ("yesno", "yes - the light is green", "yes", SAME, ""),
    ("yesno", "Answer: Yes", "yes", SAME, ""),
    ("yesno", "The answer is no.", "no", SAME, ""),
    ("yesno", "There is no dog in the picture.", "no", SAME, ""),
    ("yesno", "**Yes**", "yes", None, MARKDOWN),
    ("yesno", "**No**", "no", None, MARKDOWN),
    ("yesno", "Answer:No", "no", None, MARKDOWN),
    ("yesno", "Yes: the clock shows three.", "yes", None, MARKDOWN),
    ("yesno", "Nope", "no", None, COLLOQUIAL),
    ("yesno", "Yeah", "yes", None, COLLOQUIAL),
    ("yesno", "Yep, it is red.", "yes", None, COLLOQUIAL),
    ("yesno", "Nah.", "no", None, COLLOQUIAL),
    ("yesno", "The dog is not red.", None, SAME, ""),
    ("yesno", "I don't think so.", None, SAME, ""),
    ("yesno", "Not at all.", None, SAME, ""),
    ("yesno", "Absolutely.", None, SAME, ""),
    ("yesno", "Correct.", None, SAME, ""),
    ("yesno", "Nobody is in the picture.", None, SAME, ""),
    ("yesno", "yes and no", None, SAME, ""),
    ("yesno", "yes/no", None, SAME, ""),
    ("yesno", "Yes or no: yes.", None, "yes", "ovis sees both words and reads nothing; VLMEvalKit keeps the ':' in "
     "'no:', so it sees only 'yes'"),
    ("yesno", "Yes, I see no other animals.", None, SAME, ""),
    ("yesno", "There are no cars, yes.", None, SAME, ""),
]
