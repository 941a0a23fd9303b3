"""``ovis eval``: VLMEvalKit TSVs, prompts, answer extraction, scoring rules, resuming, the CLI."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from ovis.cli import main
from ovis.eval.extract import extract_choice, extract_yes_no, vqa_match
from ovis.eval.predictions import read_predictions
from ovis.eval.prompts import build_prompt
from ovis.eval.run import evaluate_file
from ovis.eval.scoring import score
from ovis.eval.tsv import BenchmarkError, read_benchmark, with_circular, write_benchmark


def png(colour=(200, 30, 30), size=(32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


RED, BLUE, GREEN = png((200, 30, 30)), png((30, 30, 200)), png((30, 200, 30))


def mcq_rows():
    return [
        {"index": 0, "image": RED, "question": "What colour?", "A": "red", "B": "blue", "C": "green",
         "answer": "A", "category": "colour", "hint": "Look closely."},
        {"index": 1, "image": BLUE, "question": "Which colour?", "A": "red", "B": "blue", "C": "green",
         "answer": "B", "category": "colour"},
        {"index": 2, "image": "1", "question": "Is it dark?", "A": "yes", "B": "no", "answer": "A",
         "category": "light"},  # MMBench: the image of row index 1, by reference
        {"index": 3, "image": GREEN, "question": "Name it", "A": "grass", "B": "sky", "answer": "A",
         "category": "light"},
    ]


# -- reading files -------------------------------------------------------------------------------------
def test_reads_the_vlmevalkit_layout(tmp_path):
    bench = read_benchmark(write_benchmark(tmp_path / "MMBench_DEV_EN.tsv", mcq_rows()))
    assert bench.kind == "mcq" and bench.name == "MMBench_DEV_EN" and len(bench) == 4
    first, shared = bench.items[0], bench.items[2]
    assert first.options == {"A": "red", "B": "blue", "C": "green"} and first.hint == "Look closely."
    assert shared.images == bench.items[1].images and shared.options == {"A": "yes", "B": "no"}
    text, images = build_prompt(first, "mcq")
    assert text == ("<image>\nHint: Look closely.\nQuestion: What colour?\nOptions:\nA. red\nB. blue\nC. green\n"
                    "Please select the correct answer from the options above. \n")
    assert images == [RED]
    assert build_prompt(first, "mcq", "plain") == ("<image>\nWhat colour?", [RED])


def test_kinds_are_inferred_and_prompts_follow_them(tmp_path):
    yn = read_benchmark(write_benchmark(tmp_path / "custom_yn.tsv", [
        {"index": 0, "image": RED, "question": "Is it red?", "answer": "Yes"}]))
    vqa = read_benchmark(write_benchmark(tmp_path / "custom_vqa.tsv", [
        {"index": 0, "image": RED, "question": "Which colour?", "answer": "red"}]))
    assert (yn.kind, vqa.kind) == ("yesno", "vqa")
    assert build_prompt(yn.items[0], "yesno")[0] == "<image>\nIs it red? Please answer yes or no."
    assert build_prompt(vqa.items[0], "vqa")[0] == (
        "<image>\nWhich colour?\nAnswer the question using a single word or phrase.")


def test_mmmu_image_tags_place_several_images(tmp_path):
    import base64

    images = json.dumps([base64.b64encode(RED).decode(), base64.b64encode(BLUE).decode()])
    path = tmp_path / "MMMU_DEV_VAL.tsv"
    path.write_text("index\timage\tquestion\tA\tB\tanswer\n"
                    f"7\t{images}\tCompare <image 2> with <image 1>.\tsame\tdifferent\tB\n")
    item = read_benchmark(path).items[0]
    text, ordered = build_prompt(item, "mcq")
    assert "Question: Compare <image> with <image>." in text and not text.startswith("<image>")
    assert ordered == [BLUE, RED]


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "broken.tsv"
    path.write_text("index\tquestion\tA\tB\n0\tq\ta\tb\n")
    with pytest.raises(BenchmarkError, match=r"missing column\(s\) answer, image or image_path"):
        read_benchmark(path)


def test_an_answer_outside_the_options_is_an_error(tmp_path):
    rows = mcq_rows()
    rows[1]["answer"] = "D"
    with pytest.raises(BenchmarkError, match=r"row 2 \(index 1\): answer 'D' is not one of its options \(A, B, C\)"):
        read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", rows))


def test_undecodable_images_are_counted_not_fatal(tmp_path):
    rows = mcq_rows()
    rows[0]["image"] = b"this is not a picture"
    rows[3]["image"] = "not base64 at all!"
    bench = read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", rows))
    assert [item.index for item in bench.items] == ["1", "2"]
    assert [bad["index"] for bad in bench.bad_rows] == ["0", "3"]
    assert "cannot be decoded" in bench.bad_rows[0]["reason"]
    report = score(bench, {"1": "B", "2": "A"})
    assert report["bad_rows"] == 2 and report["metrics"]["accuracy"] == 1.0


def test_image_path_is_relative_to_the_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(RED)
    path = tmp_path / "RealWorldQA.tsv"
    path.write_text("index\timage_path\tquestion\tA\tB\tanswer\n0\timgs/a.png\tq?\tx\ty\tA\n"
                    "1\timgs/missing.png\tq?\tx\ty\tB\n")
    bench = read_benchmark(path)
    assert bench.items[0].images == [RED]
    assert "missing.png" in bench.bad_rows[0]["reason"]


# -- extraction ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, expected", [
    ("A", "A"), ("B.", "B"), ("(C)", "C"), ("C) green", "C"), ("The answer is B.", "B"),
    ("answer: c", "C"), ("I think C is right", "C"), ("It is blue.", "B"), ("dark green", "C"),
    ("A or B", None), ("no idea", None), ("", None), ("red and blue", None), ("Z", None),
])
def test_choice_extraction(reply, expected):
    assert extract_choice(reply, {"A": "red", "B": "blue", "C": "green"}) == expected


@pytest.mark.parametrize("reply, expected", [
    ("Yes", "yes"), ("no.", "no"), ("Yes, there is.", "yes"), ("No, it is not.", "no"),
    ("yes and no", None), ("maybe", None),
])
def test_yes_no_extraction(reply, expected):
    assert extract_yes_no(reply) == expected


def test_vqa_matching():
    assert vqa_match("Three.", ["3"]) and vqa_match("the Red", ["red"])
    assert not vqa_match("red car", ["red"])
    assert vqa_match("red car", ["red"], relaxed=True)
    assert vqa_match("10.4", ["10"], relaxed=True) and not vqa_match("10.6", ["10"], relaxed=True)
    assert vqa_match("1,000", ["1000"])


# -- scoring on hand-written predictions with known scores ---------------------------------------------------
def test_vanilla_multiple_choice_scores(tmp_path):
    bench = read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", mcq_rows()))
    report = score(bench, {"0": "A", "1": "It is red.", "2": "hmm", "3": "grass"})
    assert report["metrics"]["accuracy"] == 0.5  # 0 and 3 right; 1 wrong; 2 unmatched
    assert report["unmatched"] == 1 and report["answered"] == 4
    assert report["categories"] == {"colour": {"questions": 2, "accuracy": 0.5},
                                    "light": {"questions": 2, "accuracy": 0.5}}


def test_circular_evaluation(tmp_path):
    bench = with_circular(read_benchmark(write_benchmark(tmp_path / "MMBench.tsv", mcq_rows()[:2])))
    assert len(bench) == 6  # two questions x three rotations
    rotated = [item for item in bench.items if item.group == "0"]
    assert [item.options["A"] for item in rotated] == ["red", "blue", "green"]
    assert [item.answer for item in rotated] == ["A", "C", "B"]  # "red" follows its text around
    # Question 0 answered by text every time (always right); question 1 always says "A".
    predictions = {item.index: ("red" if item.group == "0" else "A") for item in bench.items}
    report = score(bench, predictions)
    assert report["metrics"]["circular_accuracy"] == 0.5
    assert report["metrics"]["vanilla_accuracy"] == 0.5  # question 1's first variant: A is red, wrong
    predictions["1000001"] = "blue"  # question 1, rotation 1: A=blue... now right only there
    assert score(bench, predictions)["metrics"]["circular_accuracy"] == 0.5


def test_mme_pair_scoring(tmp_path):
    rows = []
    for pic, (colour, category) in enumerate([(RED, "color"), (BLUE, "color"), (GREEN, "existence")]):
        rows += [{"index": 2 * pic, "image": colour, "question": "Is it? Please answer yes or no.", "answer": "Yes",
                  "category": category},
                 {"index": 2 * pic + 1, "image": colour, "question": "Is it not?", "answer": "No",
                  "category": category}]
    bench = read_benchmark(write_benchmark(tmp_path / "MME.tsv", rows))
    # picture 0 both right; picture 1 one right; picture 2 both wrong (one unreadable)
    report = score(bench, {"0": "Yes", "1": "No", "2": "Yes", "3": "Yes", "4": "No", "5": "perhaps"})
    assert report["metrics"]["accuracy"] == 0.5 and report["unmatched"] == 1
    assert report["metrics"]["acc_plus"] == pytest.approx(1 / 3)
    assert report["categories"]["color"]["mme_score"] == pytest.approx(100 * (3 / 4 + 1 / 2))
    assert report["categories"]["existence"]["mme_score"] == 0.0
    assert report["metrics"]["mme_score"] == pytest.approx(125.0) and report["main"] == "mme_score"
    assert report["metrics"]["mme_perception"] == pytest.approx(125.0)


def test_hallusionbench_figure_and_question_accuracy(tmp_path):
    base = {"category": "VD", "subcategory": "illusion", "set_id": "0"}
    rows = [
        {"index": 0, "image": RED, "question": "q0", "answer": "1", **base, "figure_id": "0", "question_id": "0"},
        {"index": 1, "image": RED, "question": "q1", "answer": "0", **base, "figure_id": "0", "question_id": "1"},
        {"index": 2, "image": BLUE, "question": "q0", "answer": "1", **base, "figure_id": "1", "question_id": "0"},
    ]
    for row in rows:
        row["answer"] = "Yes" if row["answer"] == "1" else "No"
    bench = read_benchmark(write_benchmark(tmp_path / "HallusionBench.tsv", rows))
    report = score(bench, {"0": "yes", "1": "yes", "2": "yes"})
    assert report["metrics"]["aAcc"] == pytest.approx(2 / 3)
    assert report["metrics"]["fAcc"] == pytest.approx(1 / 2)  # figure 0 has a wrong answer
    assert report["metrics"]["qAcc"] == pytest.approx(1 / 2)  # question 1 (one figure) is wrong


def test_vqa_scores(tmp_path):
    bench = read_benchmark(write_benchmark(tmp_path / "TextVQA_VAL.tsv", [
        {"index": 0, "image": RED, "question": "How many?", "answer": "3"},
        {"index": 1, "image": RED, "question": "Which?", "answer": '["stop", "stop sign"]'},
        {"index": 2, "image": RED, "question": "Value?", "answer": "50"},
    ]))
    assert score(bench, {"0": "three", "1": "Stop sign.", "2": "51"})["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert score(bench, {"0": "three", "1": "Stop sign.", "2": "51"}, relaxed=True)["metrics"]["accuracy"] == 1.0


# -- running: resumable, batched, written as it goes ----------------------------------------------------
class CountingRunner:
    """Wraps a real runner and counts the questions it is asked."""

    def __init__(self, runner):
        self.runner, self.asked = runner, 0
        self.args, self.model = runner.args, runner.model

    def prepare(self, *args, **kwargs):
        return self.runner.prepare(*args, **kwargs)

    def generate(self, requests):
        self.asked += len(requests)
        return self.runner.generate(requests)


def test_evaluation_resumes_where_it_stopped(chatty_runner, tmp_path):
    path = write_benchmark(tmp_path / "MMStar.tsv", mcq_rows())
    runner = CountingRunner(chatty_runner)
    first = evaluate_file(runner, path, tmp_path / "out", batch_size=3, max_new_tokens=4, progress=False)
    assert runner.asked == 4 and first["answered"] == 4
    predictions_file = tmp_path / "out" / "MMStar" / "predictions.jsonl"
    lines = predictions_file.read_text().splitlines()
    # Simulate a crash: the last prediction lost and a half-written line left behind.
    predictions_file.write_text("\n".join(lines[:-1]) + '\n{"index": 3, "predic')
    assert len(read_predictions(predictions_file)[0]) == 3
    runner.asked = 0
    again = evaluate_file(runner, path, tmp_path / "out", batch_size=3, max_new_tokens=4, progress=False)
    assert runner.asked == 1  # only the lost question is asked again
    assert again["metrics"] == first["metrics"]
    results = json.loads((tmp_path / "out" / "MMStar" / "results.json").read_text())
    assert results["answered"] == 4
    assert (tmp_path / "out" / "MMStar" / "results.csv").read_text().splitlines()[0].startswith("category,questions")


def test_cli_eval_with_synthetic_benchmarks(chatty_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(chatty_model_dir), "--synth", "--out", str(out), "--limit", "6",
                 "--max-new-tokens", "3", "--circular"]) == 0
    printed = capsys.readouterr().out
    for name in ("SynthBench_MCQ", "SynthBench_YN", "SynthBench_VQA"):
        assert name in printed
        report = json.loads((out / name / "results.json").read_text())
        assert report["answered"] == (24 if name == "SynthBench_MCQ" else 6)  # MCQ: 6 questions x 4 rotations
    summary = (out / "summary.md").read_text()
    assert summary.startswith("| benchmark | kind |")
    assert len([line for line in summary.splitlines() if line.startswith("|")]) == 5
    assert "| SynthBench_MCQ | mcq | 6 (24 rotations) |" in summary
    # results.csv says which count is of questions and which of rotations
    rows = list(csv.reader((out / "SynthBench_MCQ" / "results.csv").open()))
    assert rows[0][:4] == ["category", "questions", "rotations", "circular_accuracy"]
    assert rows[1][:3] == ["overall", "6", "24"] and "vanilla_accuracy" in rows[0]
    synth = read_benchmark(out / "synth-data" / "SynthBench_YN.tsv")
    assert synth.kind == "yesno" and {i.answer for i in synth.items} == {"yes", "no"}


def test_cli_eval_errors(chatty_model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(chatty_model_dir), "--data", str(tmp_path / "nope.tsv")]) == 2
    assert "nope.tsv" in capsys.readouterr().err
    assert main(["eval", "--model", str(chatty_model_dir)]) == 2
    assert "--synth" in capsys.readouterr().err
