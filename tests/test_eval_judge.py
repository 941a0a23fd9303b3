"""The optional judge model of ``ovis eval`` (``--judge-url``/``--judge-model``), against ovis's own
``ovis serve`` as the judge: the request it sends, how its reply is read, and how judged readings
are marked."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from ovis.cli import main
from ovis.eval.judge import Judge, JudgeError
from ovis.eval.scoring import score
from ovis.eval.tsv import read_benchmark, write_benchmark
from tests.test_eval import mcq_rows

MODEL = "chatty"


@pytest.fixture(scope="module")
def serving(chatty_model_dir, served):
    with served(chatty_model_dir, model_name=MODEL, max_batch_size=4, window_s=0.01) as pair:
        yield pair


@pytest.fixture(scope="module")
def service(serving):
    return serving[0]


@pytest.fixture(scope="module")
def server(serving):
    return serving[1]


def test_the_judge_asks_the_served_model_and_reads_its_reply(server, service, tmp_path):
    judge = Judge(server.url + "/v1", MODEL)
    bench = read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", mcq_rows()))
    item = bench.items[0]
    prompt = judge.prompt(item, "mcq", "hmm, hard to say")
    assert "Options:\nA. red\nB. blue\nC. green" in prompt and "Reply: hmm, hard to say" in prompt
    # the served model's own greedy reply to the judge's prompt, read by the same rules
    params = service.params(max_new_tokens=judge.max_tokens)
    reference = service.runner.generate([service.runner.prepare([{"role": "user", "content": prompt}], [], params)])
    assert judge.ask(prompt) == reference[0].output
    from ovis.eval.extract import extract_choice

    assert judge(item, "mcq", "hmm, hard to say") == extract_choice(reference[0].output, item.options)


def test_judged_readings_are_marked_and_scored(server, service, tmp_path, monkeypatch):
    """The served model made to answer like a judge ("B", then "Z"): replies the rules cannot read are
    judged through the real HTTP API, counted as judged, and scored by the judge's reading."""
    verdicts = iter(["B", "Z"])

    def answer_like_a_judge(requests):
        from ovis.serve.generation import Completion

        return [Completion(prompt="", output=next(verdicts), finish_reason="stop", prompt_tokens=1,
                           completion_tokens=1)
                for _ in requests]

    monkeypatch.setattr(service.runner, "generate", answer_like_a_judge)
    bench = read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", mcq_rows()))
    report = score(bench, {"0": "A", "1": "hmm, the second one", "2": "hmm", "3": "grass"},
                   judge_fn=Judge(server.url + "/v1", MODEL))
    hows = {r["index"]: (r["how"], r["extracted"]) for r in report["readings"]}
    assert hows == {"0": ("rules", "A"), "1": ("judge", "B"), "2": ("unmatched", None), "3": ("rules", "A")}
    assert report["judged"] == 1 and report["unmatched"] == 1
    assert report["metrics"]["accuracy"] == 0.75  # the judged "B" is right for question 1


def test_an_unreachable_judge_is_named(tmp_path):
    bench = read_benchmark(write_benchmark(tmp_path / "MMStar.tsv", mcq_rows()))
    with pytest.raises(JudgeError, match=r"judge http://127.0.0.1:9/v1/chat/completions could not be reached"):
        score(bench, {"0": "hmm"}, judge_fn=Judge("http://127.0.0.1:9/v1", "m", timeout_s=5))


def test_cli_with_a_judge(server, chatty_model_dir, tmp_path, capsys):
    path = write_benchmark(tmp_path / "MMStar.tsv", mcq_rows())
    out = tmp_path / "out"
    assert main(["eval", "--model", str(chatty_model_dir), "--data", str(path), "--out", str(out),
                 "--max-new-tokens", "3", "--judge-url", server.url + "/v1", "--judge-model", MODEL]) == 0
    report = json.loads((out / "MMStar" / "results.json").read_text())
    assert report["judge"] == {"url": server.url + "/v1", "model": MODEL}
    readings = [json.loads(line) for line in (out / "MMStar" / "readings.jsonl").read_text().splitlines()]
    assert len(readings) == 4 and report["judged"] == sum(r["how"] == "judge" for r in readings)
    assert {r["how"] for r in readings} <= {"rules", "judge", "unmatched"}
    assert "| judged |" in capsys.readouterr().out
