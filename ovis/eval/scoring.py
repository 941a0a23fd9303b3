"""Scores from predictions: accuracy per benchmark and category, with each benchmark family's rules.

* Multiple choice: accuracy; with circular copies (MMBench), a question counts only if every
  rotation of its options is answered right.
* Yes/no: accuracy; pictures asked several questions (MME's pairs) also get ``acc+`` (all of
  the picture's questions right) and MME's score per category, ``100 * (acc + acc+)``, summed
  into perception and cognition; HallusionBench's aAcc / fAcc / qAcc when its columns are there.
* VQA: exact match after normalisation, or relaxed (numbers within 5%, the answer as words).

Replies the rules cannot read are counted as ``unmatched`` (and scored wrong), never guessed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ovis.eval.prompts import extract_choice, extract_yes_no, vqa_answers, vqa_match
from ovis.eval.tsv import CIRCULAR_STRIDE, Benchmark, Item

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


@dataclass
class Judged:
    item: Item
    prediction: str
    extracted: str | None  # the letter / yes-no / normalised text read from the prediction
    hit: bool
    matched: bool


def judge(item: Item, kind: str, prediction: str, *, relaxed: bool = False) -> Judged:
    if kind == "mcq":
        choice = extract_choice(prediction, item.options)
        return Judged(item, prediction, choice, choice == item.answer, choice is not None)
    if kind == "yesno":
        said = extract_yes_no(prediction)
        return Judged(item, prediction, said, said == item.answer.strip().lower(), said is not None)
    hit = vqa_match(prediction, vqa_answers(item.answer), relaxed=relaxed)
    return Judged(item, prediction, prediction.strip(), hit, True)


def _mean(values: Iterable[bool]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _all_right(judged: list[Judged], key) -> dict:
    groups: dict = defaultdict(list)
    for j in judged:
        groups[key(j)].append(j.hit)
    return {k: all(v) for k, v in groups.items()}


def score(bench: Benchmark, predictions: Mapping[int, str], *, relaxed: bool = False) -> dict:
    """Score every item that has a prediction; returns a JSON-ready report."""
    judged = [judge(item, bench.kind, predictions[item.index], relaxed=relaxed)
              for item in bench.items if item.index in predictions]
    report: dict = {
        "benchmark": bench.name, "kind": bench.kind, "file": str(bench.path),
        "rows": len(bench.items) + len(bench.bad_rows), "bad_rows": len(bench.bad_rows),
        "answered": len(judged), "missing": len(bench.items) - len(judged),
        "unmatched": sum(not j.matched for j in judged),
        "metrics": {}, "categories": {},
    }
    categories = sorted({j.item.category or "all" for j in judged})
    by_category = {c: [j for j in judged if (j.item.category or "all") == c] for c in categories}
    if bench.kind == "mcq" and any(j.item.index >= CIRCULAR_STRIDE for j in judged):
        groups = _all_right(judged, lambda j: j.item.group)
        report["metrics"]["circular_accuracy"] = _mean(groups.values())
        report["metrics"]["vanilla_accuracy"] = _mean(j.hit for j in judged if j.item.index < CIRCULAR_STRIDE)
        report["main"] = "circular_accuracy"
        for c, js in by_category.items():
            g = _all_right(js, lambda j: j.item.group)
            report["categories"][c] = {"questions": len(g), "circular_accuracy": _mean(g.values())}
    else:
        report["metrics"]["accuracy"] = _mean(j.hit for j in judged)
        report["main"] = "accuracy"
        for c, js in by_category.items():
            report["categories"][c] = {"questions": len(js), "accuracy": _mean(j.hit for j in js)}
    if bench.kind == "yesno":
        _pairs(report, judged, by_category)
        _hallusion(report, judged)
    return report


def _pairs(report: dict, judged: list[Judged], by_category: dict[str, list[Judged]]) -> None:
    """MME: each picture is asked (at least) two questions; acc+ counts pictures with all right."""
    pictures = _all_right(judged, lambda j: (j.item.category, j.item.image_key))
    sizes = defaultdict(int)
    for j in judged:
        sizes[(j.item.category, j.item.image_key)] += 1
    if not sizes or min(sizes.values()) < 2:
        return
    report["metrics"]["acc_plus"] = _mean(pictures.values())
    total = {"perception": 0.0, "cognition": 0.0, "other": 0.0}
    for c, js in by_category.items():
        pics = _all_right(js, lambda j: j.item.image_key)
        acc, acc_plus = _mean(j.hit for j in js), _mean(pics.values())
        mme = 100 * (acc + acc_plus)
        report["categories"][c].update({"acc_plus": acc_plus, "mme_score": mme})
        part = "perception" if c in MME_PERCEPTION else "cognition" if c in MME_COGNITION else "other"
        total[part] += mme
    report["metrics"]["mme_score"] = sum(total.values())
    report["metrics"].update({f"mme_{k}": v for k, v in total.items() if v})
    if report["benchmark"].lower().startswith("mme"):
        report["main"] = "mme_score"


def _hallusion(report: dict, judged: list[Judged]) -> None:
    needed = ("subcategory", "set_id", "figure_id", "question_id")
    if not judged or not all(k in judged[0].item.extra for k in needed):
        return

    def key(*names):
        return lambda j: (j.item.category, *(j.item.extra.get(n) for n in names))

    report["metrics"]["aAcc"] = _mean(j.hit for j in judged)
    report["metrics"]["fAcc"] = _mean(_all_right(judged, key("subcategory", "set_id", "figure_id")).values())
    report["metrics"]["qAcc"] = _mean(_all_right(judged, key("subcategory", "set_id", "question_id")).values())
    if report["benchmark"].lower().startswith("hallusion"):
        report["main"] = "aAcc"
