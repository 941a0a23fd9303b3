"""Scores from predictions: accuracy per benchmark and category, with each benchmark family's rules.

* Multiple choice: accuracy; with circular copies (MMBench), a question counts only if every
  rotation of its options is answered right.
* Yes/no: accuracy; pictures asked several questions (MME's pairs) also get ``acc+`` (all of
  the picture's questions right) and MME's score per category, ``100 * (acc + acc+)``, summed
  into perception and cognition. A picture left with one question (a broken image, ``--limit``)
  is left out of acc+ and counted as ``incomplete_pictures``. HallusionBench gets aAcc / fAcc /
  qAcc, grouped as VLMEvalKit groups them (by ``l2-category`` and the ids in its string index).
* VQA: exact match after normalisation, or relaxed (numbers within 5%, the answer as words).

Replies the rules cannot read are counted as ``unmatched`` (and scored wrong), never guessed; an
optional judge model (:mod:`ovis.eval.judge`) may read them instead, and its readings are counted
as ``judged``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ovis.eval.extract import extract_choice, extract_yes_no, vqa_answers, vqa_match
from ovis.eval.tsv import Benchmark, Item

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
# Benchmarks whose headline metric is their family's own (exact names, case-insensitive).
MME_NAMES = frozenset({"mme"})
HALLUSION_NAMES = frozenset({"hallusionbench"})
NEARLY_ALL_UNMATCHED = 0.9  # warn loudly at this share of unreadable replies

# A judge reads a reply the rules could not: (item, kind, prediction) -> letter / "yes" / "no" / None.
JudgeFn = Callable[[Item, str, str], "str | None"]


@dataclass
class Judged:
    item: Item
    prediction: str
    extracted: str | None  # the letter / yes-no / normalised text read from the prediction
    hit: bool
    matched: bool
    how: str = "rules"  # "rules", "judge" (read by the judge model) or "unmatched"


def judge(item: Item, kind: str, prediction: str, *, relaxed: bool = False, judge_fn: JudgeFn | None = None
          ) -> Judged:
    """Read one prediction and score it against the item's answer."""
    if kind == "vqa":
        hit = vqa_match(prediction, vqa_answers(item.answer), relaxed=relaxed)
        return Judged(item, prediction, prediction.strip(), hit, True)
    said = extract_choice(prediction, item.options) if kind == "mcq" else extract_yes_no(prediction)
    how = "rules"
    if said is None and judge_fn is not None:
        said = judge_fn(item, kind, prediction)
        how = "judge"
    if said is None:
        how = "unmatched"
    gold = item.answer if kind == "mcq" else item.answer.strip().lower()
    return Judged(item, prediction, said, said == gold, said is not None, how)


def _mean(values: Iterable[bool]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _all_right(judged: list[Judged], key) -> dict:
    groups: dict = defaultdict(list)
    for j in judged:
        groups[key(j)].append(j.hit)
    return {k: all(v) for k, v in groups.items()}


def score(bench: Benchmark, predictions: Mapping[str, str], *, relaxed: bool = False,
          judge_fn: JudgeFn | None = None) -> dict:
    """Score every item that has a prediction; returns a JSON-ready report."""
    judged = [judge(item, bench.kind, predictions[item.index], relaxed=relaxed, judge_fn=judge_fn)
              for item in bench.items if item.index in predictions]
    report = score_judged(bench, judged)
    report["readings"] = [{"index": j.item.index, "extracted": j.extracted, "hit": j.hit, "how": j.how}
                          for j in judged]
    return report


def score_judged(bench: Benchmark, judged: list[Judged]) -> dict:
    questions = len({j.item.group for j in judged})
    report: dict = {
        "benchmark": bench.name, "kind": bench.kind, "file": str(bench.path),
        "rows": len(bench.items) + len(bench.bad_rows), "bad_rows": len(bench.bad_rows),
        "answered": len(judged), "questions": questions, "missing": len(bench.items) - len(judged),
        "unmatched": sum(not j.matched for j in judged), "judged": sum(j.how == "judge" for j in judged),
        "metrics": {}, "categories": {}, "warnings": [],
    }
    categories = sorted({j.item.category or "all" for j in judged})
    by_category = {c: [j for j in judged if (j.item.category or "all") == c] for c in categories}
    if bench.kind == "mcq" and any(j.item.rotation for j in judged):
        report["rotations"] = len(judged)  # in circular runs "answered" counts rotations, not questions
        groups = _all_right(judged, lambda j: j.item.group)
        report["metrics"]["circular_accuracy"] = _mean(groups.values())
        report["metrics"]["vanilla_accuracy"] = _mean(j.hit for j in judged if j.item.rotation == 0)
        report["main"] = "circular_accuracy"
        for c, js in by_category.items():
            g = _all_right(js, lambda j: j.item.group)
            report["categories"][c] = {"questions": len(g), "rotations": len(js), "circular_accuracy":
                                       _mean(g.values()), "vanilla_accuracy": _mean(j.hit for j in js
                                                                                     if j.item.rotation == 0)}
    else:
        report["metrics"]["accuracy"] = _mean(j.hit for j in judged)
        report["main"] = "accuracy"
        for c, js in by_category.items():
            report["categories"][c] = {"questions": len(js), "accuracy": _mean(j.hit for j in js)}
    if bench.kind == "yesno":
        _pairs(report, judged, by_category)
        _hallusion(report, judged)
    if judged and report["unmatched"] >= NEARLY_ALL_UNMATCHED * len(judged):
        report["warnings"].append(
            f"{bench.name}: {report['unmatched']} of {len(judged)} replies could not be read as {bench.kind} "
            f"answers, so its score means little; is the kind right (--kind, now {bench.kind}) and does the "
            "model answer in the expected form?")
    return report


def _pairs(report: dict, judged: list[Judged], by_category: dict[str, list[Judged]]) -> None:
    """MME: each picture is asked (at least) two questions; acc+ counts pictures with all right.
    Pictures left with one answered question are left out of acc+ (and counted), not fatal."""
    sizes: dict = defaultdict(int)
    for j in judged:
        sizes[(j.item.category, j.item.image_key)] += 1
    complete = {key for key, n in sizes.items() if n >= 2}
    incomplete = len(sizes) - len(complete)
    is_mme = report["benchmark"].lower() in MME_NAMES
    # Pairs exist if most pictures have them (or the file is MME): a file of one question per
    # picture has no acc+.
    if not complete or (len(complete) < incomplete and not is_mme):
        return
    paired = [j for j in judged if (j.item.category, j.item.image_key) in complete]
    report["metrics"]["acc_plus"] = _mean(_all_right(paired, lambda j: (j.item.category, j.item.image_key)).values())
    report["incomplete_pictures"] = incomplete
    total = {"perception": 0.0, "cognition": 0.0, "other": 0.0}
    for c, js in by_category.items():
        pics = _all_right([j for j in js if (j.item.category, j.item.image_key) in complete],
                          lambda j: j.item.image_key)
        acc, acc_plus = _mean(j.hit for j in js), _mean(pics.values())
        mme = 100 * (acc + acc_plus)
        report["categories"][c].update({"acc_plus": acc_plus, "mme_score": mme})
        part = "perception" if c in MME_PERCEPTION else "cognition" if c in MME_COGNITION else "other"
        total[part] += mme
    report["metrics"]["mme_score"] = sum(total.values())
    report["metrics"].update({f"mme_{k}": v for k, v in total.items() if v})
    if is_mme:
        report["main"] = "mme_score"


def hallusion_ids(item: Item) -> tuple[str, str, str] | None:
    """(set, figure, question) ids: from the string index as VLMEvalKit parses it
    (``VS_chart_0_0_0_0``: parts 4-6), else from ``set_id`` / ``figure_id`` / ``question_id`` columns."""
    parts = item.index.split("_")
    if len(parts) >= 6:
        return parts[3], parts[4], parts[5]
    ids = tuple(item.extra.get(k) for k in ("set_id", "figure_id", "question_id"))
    return ids if all(v is not None for v in ids) else None  # type: ignore[return-value]


def _hallusion_metrics(judged: list[Judged]) -> dict[str, float]:
    def l2(j: Judged) -> str | None:
        return j.item.extra.get("l2-category", j.item.extra.get("subcategory"))

    ids = {id(j): hallusion_ids(j.item) for j in judged}
    figure = _all_right(judged, lambda j: (l2(j), ids[id(j)][0], ids[id(j)][1]))
    question = _all_right(judged, lambda j: (l2(j), ids[id(j)][0], ids[id(j)][2]))
    return {"aAcc": _mean(j.hit for j in judged), "fAcc": _mean(figure.values()), "qAcc": _mean(question.values())}


def _hallusion(report: dict, judged: list[Judged]) -> None:
    is_hallusion = report["benchmark"].lower() in HALLUSION_NAMES
    if not judged or any(hallusion_ids(j.item) is None for j in judged):
        if is_hallusion and judged:
            report["warnings"].append(f"{report['benchmark']}: no figure/question ids in the index or columns; "
                                      "fAcc and qAcc left out")
        return
    report["metrics"].update(_hallusion_metrics(judged))
    # Per category and per l2-category, as VLMEvalKit reports them.
    splits: tuple[Callable[[Judged], str | None], ...] = (
        lambda j: j.item.category, lambda j: j.item.extra.get("l2-category"))
    for value_of in splits:
        for value in sorted({v for j in judged if (v := value_of(j))}):
            subset = [j for j in judged if value_of(j) == value]
            entry = report["categories"].setdefault(value, {"questions": len(subset),
                                                            "accuracy": _mean(j.hit for j in subset)})
            entry.update(_hallusion_metrics(subset))
    if is_hallusion:
        report["main"] = "aAcc"
