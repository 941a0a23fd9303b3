"""``ovis eval``: VLMEvalKit TSVs, prompts, answer extraction, scoring rules, resuming, the CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from ovis.cli import main
from ovis.eval.extract import extract_choice, extract_yes_no, vqa_match
from ovis.eval.predictions import read_predictions
from ovis.eval.prompts import build_prompt
from ovis.eval.run import evaluate_file, summary_table
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


def test_a_decompression_bomb_is_a_bad_row_read_from_its_header(tmp_path):
    import struct
    import zlib

    # A PNG that declares 10000 x 10000 pixels (over the 89.5 million default) in a few dozen bytes.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    rows = mcq_rows()
    rows[1]["image"] = bomb
    bench = read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", rows))
    assert [bad["index"] for bad in bench.bad_rows] == ["1", "2"]  # row 2 refers to row 1's image
    assert "image 1: image is 10000x10000 = 100,000,000 pixels; the limit is" in bench.bad_rows[0]["reason"]


def test_undecodable_images_are_counted_not_fatal(tmp_path):
    rows = mcq_rows()
    rows[0]["image"] = b"this is not a picture"
    rows[3]["image"] = "not base64 at all!"
    bench = read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", rows))
    assert [item.index for item in bench.items] == ["1", "2"]
    assert [bad["index"] for bad in bench.bad_rows] == ["0", "3"]
    assert "image 1: not a readable image" in bench.bad_rows[0]["reason"]
    report = score(bench, {"1": "B", "2": "A"})
    assert report["bad_rows"] == 2 and report["metrics"]["accuracy"] == 1.0


def test_an_image_cell_that_is_neither_base64_nor_a_reference_says_so(tmp_path):
    rows = mcq_rows()
    rows[3]["image"] = "99"  # looks like a reference, to a row that does not exist
    bench = read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", rows))
    assert bench.bad_rows[0]["reason"].startswith("image: '99' is neither base64 image data nor the index of")


def test_a_file_whose_every_image_is_unusable_is_refused_not_scored_zero(tmp_path):
    path = tmp_path / "RealWorldQA.tsv"
    path.write_text("index\timage_path\tquestion\tA\tB\tanswer\n0\t/nonexistent/x.png\tq?\tx\ty\tA\n")
    with pytest.raises(BenchmarkError, match=r"none of its 1 rows has a usable image \(row 1, index 0: image: "
                                             r"image file /nonexistent/x.png not found\)"):
        read_benchmark(path)


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = write_benchmark(tmp_path / "MMStar.tsv", mcq_rows())
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(read_benchmark(path)) == 4


@pytest.mark.parametrize("edit, message", [
    (lambda line: "\t".join(line.split("\t")[:4]), r"row 2 has 4 tab-separated fields, the header 9 \(a row cut"),
    (lambda line: line + "\textra\tmore", r"row 2 has 11 tab-separated fields, the header 9 \(a tab inside"),
])
def test_a_row_with_another_field_count_than_the_header_is_named(tmp_path, edit, message):
    path = write_benchmark(tmp_path / "MMStar.tsv", mcq_rows())
    lines = path.read_text().splitlines()
    lines[2] = edit(lines[2])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkError, match=message):
        read_benchmark(path)


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


# -- issue 14: each defect, with a test that fails without its fix --------------------------------------------
def mme_rows(pictures: int = 3):
    rows = []
    for pic in range(pictures):
        image = png((40 * pic, 30, 30))
        rows += [{"index": 2 * pic, "image": image, "question": "Is it? Please answer yes or no.", "answer": "Yes",
                  "category": "color"},
                 {"index": 2 * pic + 1, "image": image, "question": "Is it not?", "answer": "No", "category": "color"}]
    return rows


def test_mme_broken_image_leaves_its_picture_out_of_acc_plus(tmp_path):
    rows = mme_rows()
    rows[3]["image"] = b"broken"  # picture 1 keeps one question
    bench = read_benchmark(write_benchmark(tmp_path / "MME.tsv", rows))
    report = score(bench, {"0": "Yes", "1": "No", "2": "Yes", "4": "Yes", "5": "Yes"})
    assert report["main"] == "mme_score" and report["incomplete_pictures"] == 1
    assert report["metrics"]["acc_plus"] == pytest.approx(1 / 2)  # pictures 0 (right) and 2 (wrong)
    assert report["metrics"]["accuracy"] == pytest.approx(4 / 5)  # every answered question counts
    assert report["metrics"]["mme_score"] == pytest.approx(100 * (4 / 5 + 1 / 2))


def test_mme_odd_limit_keeps_acc_plus(tmp_path):
    bench = read_benchmark(write_benchmark(tmp_path / "MME.tsv", mme_rows()))
    bench.items = bench.items[:3]
    report = score(bench, {"0": "Yes", "1": "No", "2": "Yes"})
    assert report["metrics"]["acc_plus"] == 1.0 and report["incomplete_pictures"] == 1
    assert report["main"] == "mme_score"


def test_mme_pairs_are_grouped_by_image_path(tmp_path):
    rows = mme_rows(1)
    rows[0]["image_path"], rows[1]["image_path"] = "color/1.jpg", "color/1.jpg"
    rows[1]["image"] = png((1, 2, 3))  # re-encoded copy of the same picture: same path, other bytes
    report = score(read_benchmark(write_benchmark(tmp_path / "MME.tsv", rows)), {"0": "Yes", "1": "No"})
    assert report["metrics"]["acc_plus"] == 1.0 and report["incomplete_pictures"] == 0


@pytest.mark.parametrize("name, expected", [
    ("MME-RealWorld", "mcq"), ("MME", "yesno"), ("MMEval_custom", "yesno"), ("TextVQA_VAL", "vqa")])
def test_kind_from_columns_then_exact_names(tmp_path, name, expected):
    if expected == "mcq":
        row = {"index": 0, "image": RED, "question": "Which?", "A": "a", "B": "b", "C": "c", "D": "d", "E": "e",
               "answer": "E"}
    else:
        row = {"index": 0, "image": RED, "question": "Is it red?", "answer": "Yes"}
    assert read_benchmark(write_benchmark(tmp_path / f"{name}.tsv", [row])).kind == expected


def test_nearly_all_unmatched_is_a_loud_warning(tmp_path):
    bench = read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", mcq_rows()))
    report = score(bench, {"0": "hmm", "1": "no idea", "2": "perhaps", "3": "A"})
    assert report["warnings"] == []
    report = score(bench, {"0": "hmm", "1": "no idea", "2": "perhaps", "3": "well"})
    assert "4 of 4 replies could not be read as mcq answers" in report["warnings"][0]
    assert "WARNING: MMStar: 4 of 4" in summary_table([report])


def hallusion_rows():
    # VLMEvalKit's HallusionBench: string indices whose parts 4-6 are set, figure and question ids
    rows = []
    for index, answer in [("VD_illusion_0_0_0_0", "Yes"), ("VD_illusion_0_0_0_1", "No"),
                          ("VD_illusion_0_0_1_0", "Yes"), ("VS_chart_1_3_0_0", "No")]:
        category, l2 = index.split("_")[:2]
        rows.append({"index": index, "image": RED if index.startswith("VD") else "VD_illusion_0_0_0_0",
                     "question": "Is it?", "answer": answer, "category": category, "l2-category": l2})
    return rows


def test_hallusionbench_string_indices_and_grouping(tmp_path):
    bench = read_benchmark(write_benchmark(tmp_path / "HallusionBench.tsv", hallusion_rows()))
    assert [item.index for item in bench.items][:2] == ["VD_illusion_0_0_0_0", "VD_illusion_0_0_0_1"]
    assert bench.items[3].images == bench.items[0].images  # an image shared by string index
    report = score(bench, {"VD_illusion_0_0_0_0": "Yes", "VD_illusion_0_0_0_1": "Yes",
                           "VD_illusion_0_0_1_0": "Yes", "VS_chart_1_3_0_0": "No"})
    assert report["main"] == "aAcc" and report["metrics"]["aAcc"] == pytest.approx(3 / 4)
    # figures (illusion,0,0) wrong, (illusion,0,1) right, (chart,3,0) right
    assert report["metrics"]["fAcc"] == pytest.approx(2 / 3)
    # questions (illusion,0,0) right on both figures, (illusion,0,1) wrong, (chart,3,0) right
    assert report["metrics"]["qAcc"] == pytest.approx(2 / 3)
    assert report["categories"]["VS"]["fAcc"] == 1.0 and report["categories"]["illusion"]["qAcc"] == 0.5


def test_circular_with_string_indices(tmp_path):
    rows = mcq_rows()[:2]
    rows[0]["index"], rows[1]["index"] = "q-a", "q-b"
    bench = with_circular(read_benchmark(write_benchmark(tmp_path / "MMBench.tsv", rows)))
    assert [item.index for item in bench.items][:3] == ["q-a", "q-a#1", "q-a#2"]
    report = score(bench, {item.index: "red" for item in bench.items})
    assert report["metrics"]["circular_accuracy"] == 0.5 and report["rotations"] == 6 and report["questions"] == 2


@pytest.mark.parametrize("reply, expected", [
    ("It is starving.", None), ("stars", "D"), ("The shape is coloured.", None), ("It was rendered.", None),
    ("A square.", "B"), ("A star-like circle", "A"), ("triangles", "C"),  # "star-like" is not "star"
])
def test_option_text_matches_whole_words_and_articles_are_not_letters(reply, expected):
    assert extract_choice(reply, {"A": "circle", "B": "square", "C": "triangle", "D": "star",
                                  "E": "red"}) == expected


NINE = {letter: f"thing {letter.lower()}" for letter in "ABCDEFGHI"}


@pytest.mark.parametrize("reply, expected", [
    ("I think C.", "C"), ("I'm sure it is G.", "G"), ("I", "I"), ("A or B", None), ("A is right", "A"),
    ("Option (I)", "I"), ("I would say H, not A.", None),
])
def test_a_and_i_as_words_with_nine_options(reply, expected):
    assert extract_choice(reply, NINE) == expected


def write_state(path, lines: list[str], tail: str = "") -> None:
    path.write_text("".join(line + "\n" for line in lines) + tail)


def test_a_half_written_last_line_is_repaired_before_appending(chatty_runner, tmp_path):
    path = write_benchmark(tmp_path / "MMStar.tsv", mcq_rows())
    runner = CountingRunner(chatty_runner)
    evaluate_file(runner, path, tmp_path / "out", batch_size=4, max_new_tokens=4, progress=False)
    predictions_file = tmp_path / "out" / "MMStar" / "predictions.jsonl"
    lines = predictions_file.read_text().splitlines()
    write_state(predictions_file, lines[:-1], tail='{"index": "3", "predic')
    evaluate_file(runner, path, tmp_path / "out", batch_size=4, max_new_tokens=4, progress=False)
    assert all(json.loads(line) for line in predictions_file.read_text().splitlines())
    assert len(read_predictions(predictions_file)[0]) == 4  # not glued onto the broken line and lost
    # a complete last record missing only its newline is kept
    text = predictions_file.read_text()
    predictions_file.write_text(text.rstrip("\n"))
    runner.asked = 0
    evaluate_file(runner, path, tmp_path / "out", batch_size=4, max_new_tokens=4, progress=False)
    assert runner.asked == 0 and predictions_file.read_text() == text


def test_predictions_of_another_setup_are_refused_then_discarded(chatty_runner, chatty_model_dir, tmp_path):
    import dataclasses
    import shutil

    from ovis.eval.predictions import StalePredictionsError

    path = write_benchmark(tmp_path / "MMStar.tsv", mcq_rows())
    runner = CountingRunner(chatty_runner)
    first = evaluate_file(runner, path, tmp_path / "out", max_new_tokens=4, progress=False)
    assert first["fingerprint"]["generation"]["max_new_tokens"] == 4
    assert json.loads((tmp_path / "out" / "MMStar" / "results.json").read_text())["fingerprint"] == first["fingerprint"]
    with pytest.raises(StalePredictionsError, match=r"generation setting max_new_tokens 4 -> 5.*--discard-stale"):
        evaluate_file(runner, path, tmp_path / "out", max_new_tokens=5, progress=False)
    with pytest.raises(StalePredictionsError, match=r"task kind 'mcq' -> 'vqa'"):
        evaluate_file(runner, path, tmp_path / "out", max_new_tokens=4, kind="vqa", progress=False)
    # the same files elsewhere are the same model: resumed, nothing asked
    moved = Path(shutil.copytree(chatty_model_dir, tmp_path / "moved"))
    runner.args, runner.asked = dataclasses.replace(chatty_runner.args, model_path=str(moved)), 0
    evaluate_file(runner, path, tmp_path / "out", max_new_tokens=4, progress=False)
    assert runner.asked == 0
    # another model (a file differs) is refused, naming it; --discard-stale starts afresh
    (moved / "config.json").write_text((moved / "config.json").read_text() + " ")
    with pytest.raises(StalePredictionsError, match=r"the model \(files differing: config.json"):
        evaluate_file(runner, path, tmp_path / "out", max_new_tokens=4, progress=False)
    report = evaluate_file(runner, path, tmp_path / "out", max_new_tokens=4, progress=False, discard_stale=True)
    assert runner.asked == 4 and report["fingerprint"]["model"]["path"] == str(moved.resolve())
    # a changed benchmark file, and a predictions file from before fingerprints, are refused too
    path.write_text(path.read_text().replace("What colour?", "Which colour?"))
    with pytest.raises(StalePredictionsError, match="the benchmark file's contents"):
        evaluate_file(runner, path, tmp_path / "out", max_new_tokens=4, progress=False)
    legacy = tmp_path / "out" / "MMStar" / "predictions.jsonl"
    legacy.write_text('{"index": 0, "prediction": "A"}\n')
    with pytest.raises(StalePredictionsError, match="no fingerprint"):
        evaluate_file(runner, path, tmp_path / "out", max_new_tokens=4, progress=False)


@pytest.mark.parametrize("flag, value", [
    ("--batch-size", "0"), ("--batch-size", "-3"), ("--limit", "0"), ("--limit", "-1"), ("--max-new-tokens", "0"),
    ("--limit", "two"),
])
def test_cli_counts_must_be_positive(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(tmp_path), "--synth", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected a positive integer" in capsys.readouterr().err


def test_library_counts_must_be_positive(chatty_runner, tmp_path):
    path = write_benchmark(tmp_path / "MMStar.tsv", mcq_rows())
    for options, name in [({"batch_size": 0}, "batch_size"), ({"limit": -1}, "limit"), ({"max_new_tokens": 0},
                                                                                        "max_new_tokens")]:
        with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got -?\d"):
            evaluate_file(chatty_runner, path, tmp_path / "out", progress=False, **options)


def test_cli_checks_every_file_before_loading_the_model(chatty_model_dir, tmp_path, capsys, monkeypatch):
    import ovis.serve.runner

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the files were checked")

    good = write_benchmark(tmp_path / "MMStar.tsv", mcq_rows())
    rows = mcq_rows()
    rows[1]["answer"] = "D"
    bad = write_benchmark(tmp_path / "Broken.tsv", rows)
    monkeypatch.setattr(ovis.serve.runner.OvisRunner, "__init__", no_loading)
    assert main(["eval", "--model", str(chatty_model_dir), "--data", str(good), "--data", str(bad)]) == 2
    assert "Broken.tsv: row 2 (index 1): answer 'D' is not one of its options" in capsys.readouterr().err


def test_cli_refuses_stale_predictions_before_loading(chatty_model_dir, tmp_path, capsys, monkeypatch):
    import ovis.serve.runner

    path = write_benchmark(tmp_path / "MMStar.tsv", mcq_rows())
    out = tmp_path / "out"
    base = ["eval", "--model", str(chatty_model_dir), "--data", str(path), "--out", str(out), "--dtype", "float32"]
    assert main([*base, "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    real_init = ovis.serve.runner.OvisRunner.__init__
    monkeypatch.setattr(ovis.serve.runner.OvisRunner, "__init__", lambda *a, **k: pytest.fail("model loaded"))
    assert main([*base, "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "predictions made differently" in err and "max_new_tokens 3 -> 4" in err and "--discard-stale" in err
    monkeypatch.setattr(ovis.serve.runner.OvisRunner, "__init__", real_init)
    assert main([*base, "--max-new-tokens", "4", "--discard-stale"]) == 0
    report = json.loads((out / "MMStar" / "results.json").read_text())
    assert report["fingerprint"]["generation"]["max_new_tokens"] == 4 and report["fingerprint"]["dtype"] == "float32"


def test_cli_judge_flags_go_together(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--synth", "--judge-url", "http://localhost:1/v1"]) == 2
    assert "--judge-url and --judge-model go together" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--synth", "--judge-url", "localhost:1",
                 "--judge-model", "m", "--out", str(tmp_path / "o")]) == 2
    assert "must be an http(s) URL" in capsys.readouterr().err


def test_results_csv_holds_every_reported_metric(tmp_path):
    from ovis.eval.run import _write_csv

    bench = read_benchmark(write_benchmark(tmp_path / "MME.tsv", mme_rows()))
    report = score(bench, {str(i): "Yes" for i in range(6)})
    _write_csv(tmp_path / "mme.csv", report)
    header, overall, *_ = list(csv.reader((tmp_path / "mme.csv").open()))
    assert {"accuracy", "acc_plus", "mme_score", "mme_perception"} <= set(header)
    assert overall[header.index("mme_perception")] == f"{report['metrics']['mme_perception']:.4f}"
    hallusion = read_benchmark(write_benchmark(tmp_path / "HallusionBench.tsv", hallusion_rows()))
    report = score(hallusion, {item.index: "Yes" for item in hallusion.items})
    _write_csv(tmp_path / "hb.csv", report)
    header, overall, *rows = list(csv.reader((tmp_path / "hb.csv").open()))
    assert {"aAcc", "fAcc", "qAcc"} <= set(header) and overall[header.index("fAcc")] != ""
    assert [r[0] for r in rows] == ["VD", "VS", "chart", "illusion"]
