"""``ovis run`` and ``ovis chat`` on a saved model."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ovis.cli import main


@pytest.fixture(scope="module")
def red_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (64, 64), (220, 40, 40)).save(path)
    return path


def test_run_streams_the_same_answer_as_the_runner(chatty_model_dir, chatty_runner, red_png, capsys):
    expected = chatty_runner.run(red_png, "What colour?", max_new_tokens=6)
    assert main(["run", "--model", str(chatty_model_dir), "--image", str(red_png), "What colour?",
                 "--max-new-tokens", "6", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out == expected["output"] + "\n"
    assert main(["run", "--model", str(chatty_model_dir), "--image", str(red_png), "What colour?",
                 "--max-new-tokens", "6", "--json", "--dtype", "float32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == expected


def test_run_reports_a_missing_image(chatty_model_dir, tmp_path, capsys):
    assert main(["run", "--model", str(chatty_model_dir), "--image", str(tmp_path / "gone.png"), "hi"]) == 2
    assert "gone.png" in capsys.readouterr().err


def test_run_rejects_sampling_knobs_without_sampling(chatty_model_dir, capsys):
    assert main(["run", "--model", str(chatty_model_dir), "hi", "--temperature", "0.3"]) == 2
    assert "do_sample" in capsys.readouterr().err


def test_chat_keeps_history_survives_bad_images_and_resets(chatty_model_dir, chatty_runner, red_png, tmp_path,
                                                           monkeypatch, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    lines = iter([f"/image {red_png}", "What colour?", "And now?", f"/image {bad}", "This one?",
                  "/frobnicate", "/reset", "Hello"])

    def fake_input(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    # float32 as the runner fixture: "auto" may pick bf16 on this CPU when a timing probe says so
    assert main(["chat", "--model", str(chatty_model_dir), "--max-new-tokens", "5", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    session = chatty_runner.session()
    first = session.ask("What colour?", [red_png], max_new_tokens=5)["output"]
    second = session.ask("And now?", max_new_tokens=5)["output"]
    after_reset = chatty_runner.run(None, "Hello", max_new_tokens=5)["output"]
    assert f"ovis> {first}\n" in out
    assert f"ovis> {second}\n" in out
    assert "bad.png" in out and "not a readable image" in out
    assert "unknown command '/frobnicate'" in out
    assert "(conversation cleared)" in out
    assert f"ovis> {after_reset}\n" in out


def test_a_command_on_a_machine_without_a_gpu_prints_no_deepspeed_accelerator_notice(chatty_model_dir):
    """transformers imports DeepSpeed where it is installed, and DeepSpeed says it found no GPU."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DS_ACCELERATOR", None)
    run = subprocess.run(
        [sys.executable, "-m", "ovis.cli", "run", "--model", str(chatty_model_dir), "hi", "--max-new-tokens", "1"],
        capture_output=True, text=True, env=env, check=True,
    )
    import torch

    if torch.cuda.device_count() == 0:
        assert "Setting accelerator to CPU" not in run.stderr, run.stderr
        # the control: DeepSpeed says it here, outside ovis's command line
        bare = subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, text=True, env=env)
        assert "Setting accelerator to CPU" in bare.stderr + bare.stdout


def test_a_second_video_or_frames_without_a_video_is_refused(chatty_model_dir, capsys):
    from ovis.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--model", str(chatty_model_dir), "--video", "a.mp4", "--video", "b.mp4", "q"])
    assert "--video is given twice ('a.mp4', 'b.mp4'); give it once" in capsys.readouterr().err
    assert main(["run", "--model", str(chatty_model_dir), "--num-frames", "4", "q"]) == 2
    assert "--num-frames samples frames from --video" in capsys.readouterr().err
