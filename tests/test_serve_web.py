"""The Gradio web UI of ``ovis serve``: the history formats Gradio hands over, the chat driven through
``gradio_client`` (replies equal the runner's greedy output, history with images, streaming, refused
uploads, stopping), the v1 seed's ``python ovis/serve/server.py`` command, and a real headless browser."""

from __future__ import annotations

import inspect
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402

from ovis.serve.web import conversation_from_history  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # its pandas use, not ours

REPO = Path(__file__).resolve().parents[1]
MODEL = "chatty"
LIMITS = {"max_images": 2, "max_image_pixels": 128 * 128, "max_image_bytes": 20_000, "max_new_tokens": 24,
          "max_prompt_tokens": 300}


def write_picture(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A PNG that differs per seed: a coloured square on a coloured background."""
    image = Image.new("RGB", size, ((seed * 70) % 256, (seed * 130 + 40) % 256, (seed * 200 + 90) % 256))
    image.paste(((seed * 30 + 200) % 256, 20, 90), (8, 8, 8 + size[0] // 3, 8 + size[1] // 3))
    image.save(path)
    return path


def load(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def expected(service, messages: list[dict], images: list[Path], **settings) -> str:
    """What the runner answers, without the UI, for the conversation the UI should send."""
    runner = service.runner
    request = runner.prepare(messages, [load(p) for p in images], service.params(**settings))
    return runner.generate([request])[0].output


def message(text: str, *files: Path) -> dict:
    return {"text": text, "files": [gradio_client.handle_file(str(f)) for f in files]}


# -- the history Gradio passes to the chat function -------------------------------------------------
BROWSER_HISTORY = [  # what Gradio 6 passes after the conversation went through the browser's Chatbot
    {"role": "user", "metadata": None, "options": None, "content": [
        {"type": "file", "alt_text": None, "file": {"path": "/up/a.png", "url": "/gradio_api/file=/up/a.png",
                                                    "mime_type": "image/png", "meta": {"_type": "gradio.FileData"}}},
        {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "metadata": None, "options": None, "content": [{"type": "text", "text": "A cat."}]},
]
API_HISTORY = [  # what ChatInterface keeps server-side for gradio_client sessions
    {"role": "user", "content": [{"path": "/up/a.png"}, "What is this?"]},
    {"role": "assistant", "content": "A cat."},
]


@pytest.mark.parametrize("history", [BROWSER_HISTORY, API_HISTORY], ids=["browser", "api"])
def test_history_formats_give_the_same_conversation(history):
    messages, images = conversation_from_history(history, {"text": "And this?", "files": ["/up/b.png"]})
    assert messages == [
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "<image>\nAnd this?"},
    ]
    assert images == ["/up/a.png", "/up/b.png"]


def test_history_component_forms_markers_system_and_unanswered_turns(tmp_path):
    import gradio as gr

    c = write_picture(tmp_path / "c.png", 3)
    history = [
        {"role": "user", "content": {"type": "component", "component": "image", "value": {"path": "/up/a.png"}}},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": gr.Image(value=str(c), render=False)},
        {"role": "assistant", "content": [{"type": "text", "text": "Yes"}]},
        {"role": "user", "content": [{"path": "/up/refused.png"}, "refused: never answered"]},
        {"role": "user", "content": ("/up/d.png", "stopped before the first token")},
    ]
    messages, images = conversation_from_history(
        history, {"text": "<image> then <image>?", "files": [{"path": "/up/e.png"}, "/up/f.png"]}, system="Be brief."
    )
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\n"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "<image>\n"},
        {"role": "assistant", "content": "Yes"},
        {"role": "user", "content": "<image> then <image>?"},  # its own markers place its images
    ]
    assert images[0] == "/up/a.png" and Path(images[1]).name == "c.png" and images[2:] == ["/up/e.png", "/up/f.png"]
    messages, images = conversation_from_history([], "plain text")
    assert messages == [{"role": "user", "content": "plain text"}] and images == []


def test_history_errors_are_request_errors():
    from ovis.serve.errors import RequestError

    with pytest.raises(RequestError, match="empty"):
        conversation_from_history([], {"text": "", "files": []})
    with pytest.raises(RequestError, match="1 <image> marker"):
        conversation_from_history([], {"text": "<image> and?", "files": ["/up/a.png", "/up/b.png"]})


# -- the served UI through gradio_client ---------------------------------------------------------------
@pytest.fixture(scope="module")
def service(chatty_model_dir):
    from ovis.serve.limits import ServeLimits
    from ovis.serve.runner import OvisRunner, RunnerArguments
    from ovis.serve.service import Service

    runner = OvisRunner(RunnerArguments(model_path=str(chatty_model_dir), max_new_tokens=8))
    service = Service.wrap(runner, limits=ServeLimits(**LIMITS), model_name=MODEL, window_s=0.01)
    yield service
    service.close()


@pytest.fixture(scope="module")
def server(service):
    from ovis.serve.server import ServerThread, build_app

    with ServerThread(build_app(service, api=False)) as server:
        yield server
        # gradio_client sessions hold a heartbeat stream open; don't wait for them to hang up.
        server.server.force_exit = True


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    bad = folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    noise = Image.frombytes("RGB", (100, 100), os.urandom(100 * 100 * 3))  # ~30 kB as a PNG
    noise.save(folder / "heavy.png")
    return {
        "heavy": folder / "heavy.png",
        "one": write_picture(folder / "one.png", 1), "two": write_picture(folder / "two.png", 2),
        "three": write_picture(folder / "three.png", 3), "big": write_picture(folder / "big.png", 4, (200, 200)),
        "bad": bad,
    }


def new_client(server):
    """A gradio_client session (each has its own chat history)."""
    return gradio_client.Client(server.url + "/", verbose=False)


def test_page_api_name_and_localhost_binding(server):
    from ovis.cli import build_parser
    from ovis.serve.options import ServeOptions
    from ovis.serve.server import ServerThread

    with urllib.request.urlopen(server.url + "/", timeout=30) as response:
        assert response.status == 200
        page = response.read().decode()
    assert "gradio" in page.lower() and f"Ovis · {MODEL}" in page
    assert "/chat" in new_client(server).view_api(return_format="dict", print_info=False)["named_endpoints"]
    # Only this machine can connect unless --host says otherwise.
    assert server.host == "127.0.0.1"
    assert ServerThread.__init__.__kwdefaults__["host"] == "127.0.0.1"
    assert build_parser().parse_args(["serve", "--model_path", "m"]).host == "127.0.0.1"
    assert ServeOptions(model_path="m").host == "127.0.0.1"


def test_image_question_then_history_with_more_images(server, service, pictures):
    client = new_client(server)
    one, two = pictures["one"], pictures["two"]
    first = client.predict(message("What is in the picture?", one), api_name="/chat")
    conversation = [{"role": "user", "content": "<image>\nWhat is in the picture?"}]
    assert first == expected(service, conversation, [one])
    assert first  # the chatty model says something

    second = client.predict(message("Tell me more."), api_name="/chat")
    conversation += [{"role": "assistant", "content": first}, {"role": "user", "content": "Tell me more."}]
    assert second == expected(service, conversation, [one])

    third = client.predict(message("And this one?", two), api_name="/chat")
    conversation += [{"role": "assistant", "content": second}, {"role": "user", "content": "<image>\nAnd this one?"}]
    assert third == expected(service, conversation, [one, two])  # the first image is still in the prompt


def test_text_only_question_streams(server, service):
    job = new_client(server).submit(message("Hello there, who are you?"), api_name="/chat")
    final = job.result(timeout=120)
    outputs = job.outputs()
    assert final == expected(service, [{"role": "user", "content": "Hello there, who are you?"}], [])
    assert outputs[-1] == final
    assert all(b.startswith(a) for a, b in itertools.pairwise(outputs)), outputs


def test_generation_settings_reach_the_model(server, service, pictures):
    short = new_client(server).predict(message("Describe it.", pictures["one"]), max_new_tokens=3, api_name="/chat")
    assert short == expected(service, [{"role": "user", "content": "<image>\nDescribe it."}], [pictures["one"]],
                             max_new_tokens=3)
    sampled = [
        new_client(server).predict(message("Say anything."), do_sample=True, temperature=1.5, seed=7,
                                   max_new_tokens=12, api_name="/chat")
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1] == expected(service, [{"role": "user", "content": "Say anything."}], [],
                                                do_sample=True, temperature=1.5, seed=7, max_new_tokens=12)
    # The temperature slider is ignored (not an error) while sampling is off.
    greedy = new_client(server).predict(message("Say anything."), do_sample=False, temperature=1.5, api_name="/chat")
    assert greedy == expected(service, [{"role": "user", "content": "Say anything."}], [])


def test_refused_uploads_give_clear_errors_and_the_session_goes_on(server, service, pictures):
    client = new_client(server)
    refusals = [
        (message("What is this?", pictures["bad"]), "broken.png", "could not be decoded as an image"),
        (message("And this?", pictures["big"]), "big.png", "200x200 = 40,000 pixels; the limit is 16,384"),
        (message("All of them?", pictures["one"], pictures["two"], pictures["three"]), "3 images",
         "the limit is 2"),
        (message("word " * 400), "the prompt is", "300"),
        (message(""), "empty"),
    ]
    for sent, *needles in refusals:
        with pytest.raises(gradio_client.exceptions.AppError) as refused:
            client.predict(sent, api_name="/chat")
        for needle in needles:
            assert needle in str(refused.value), (needle, str(refused.value))
    # Gradio itself refuses files over --max-image-bytes before they are uploaded (the browser says so too).
    with pytest.raises(ValueError, match="exceeds the maximum file size of 20000 bytes"):
        client.predict(message("Too heavy?", pictures["heavy"]), api_name="/chat")
    # The same session still answers, and none of the refused messages became part of its history.
    reply = client.predict(message("What is in the picture?", pictures["one"]), api_name="/chat")
    assert reply == expected(service, [{"role": "user", "content": "<image>\nWhat is in the picture?"}],
                             [pictures["one"]])


def test_stopping_a_reply_cancels_its_generation(server, service, monkeypatch):
    from ovis.serve.generation import Completion

    started, cancelled = threading.Event(), threading.Event()

    def slow_generate(requests):
        completions = []
        for request in requests:
            sent, reason = 0, "length"
            while sent < 400:  # ~20 s unless cancelled
                if request.cancelled():
                    cancelled.set()
                    reason = "cancelled"
                    break
                request.on_text("x")
                started.set()
                sent += 1
                time.sleep(0.05)
            completions.append(Completion(prompt=request.prompt, output="x" * sent, prompt_tokens=1,
                                          completion_tokens=sent, finish_reason=reason))
        return completions

    monkeypatch.setattr(service.runner, "generate", slow_generate)
    job = new_client(server).submit(message("Talk for a long time."), api_name="/chat")
    assert started.wait(60)
    job.cancel()
    assert cancelled.wait(30), "the generation went on after the client stopped it"


# -- the visual-words tab ------------------------------------------------------------------------------------
def test_visual_words_tab_draws_an_upload_and_refuses_bad_ones(server, service, pictures):
    from ovis.inspect import patch_words

    client = new_client(server)
    assert "/visual_words" in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    picture, table = client.predict(gradio_client.handle_file(str(pictures["one"])), api_name="/visual_words")
    drawn = Image.open(picture)
    assert drawn.width > 2 * drawn.height  # image | entropy | top word, side by side
    assert len(drawn.convert("RGB").getcolors(drawn.width * drawn.height) or range(257)) > 256  # a real picture
    figures = {name: value for name, value in table["data"]}
    words = patch_words(service.runner.model, service.runner.processor, load(pictures["one"]))
    assert figures["tokens"] == str(len(words.views))
    assert figures["words used in this image (distinct top words)"] == str(int(words.top_word.unique().numel()))
    assert float(figures["mean entropy (nats)"]) == pytest.approx(float(words.stats.entropy.mean()), abs=1e-5)
    refusals = [("bad", "broken.png", "could not be decoded as an image"),
                ("big", "big.png", "200x200 = 40,000 pixels; the limit is 16,384")]
    for key, *needles in refusals:
        with pytest.raises(gradio_client.exceptions.AppError) as refused:
            client.predict(gradio_client.handle_file(str(pictures[key])), api_name="/visual_words")
        for needle in needles:
            assert needle in str(refused.value), (needle, str(refused.value))
    # The chat in the other tab still answers in the same session.
    reply = client.predict(message("What is in the picture?", pictures["one"]), api_name="/chat")
    assert reply == expected(service, [{"role": "user", "content": "<image>\nWhat is in the picture?"}],
                             [pictures["one"]])


def test_visual_words_wait_for_the_runners_lock(service, pictures):
    from ovis.serve.errors import RequestError
    from ovis.serve.web import visual_words

    with pytest.raises(RequestError, match="no image"):
        visual_words(service, None)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (visual_words(service, str(pictures["two"])), done.set()))
    with service.runner.model_lock:  # a generation step in progress
        worker.start()
        assert not done.wait(1.5), "the visual tokenizer ran beside a generation step"
    assert done.wait(60)
    worker.join()


def test_visual_words_tab_explains_that_the_mlp_adapter_has_no_vocabulary():
    from ovis.composer import compose
    from ovis.serve.errors import RequestError
    from ovis.serve.runner import OvisRunner
    from ovis.serve.service import Service
    from ovis.serve.web import build_ui, visual_words

    model, processor = compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=64, adapter="mlp")
    service = Service.wrap(OvisRunner(model=model, processor=processor), model_name="mlp")
    try:
        with pytest.raises(RequestError, match="'mlp' adapter, which has no visual vocabulary"):
            visual_words(service, "any.png")
        demo = build_ui(service)
        shown = [c.get("props", {}).get("value") for c in demo.config["components"]]
        assert any(isinstance(v, str) and "Not available for this model" in v for v in shown)
        assert "visual_words" not in {d.get("api_name") for d in demo.config["dependencies"]}
        assert "chat" in {d.get("api_name") for d in demo.config["dependencies"]}
    finally:
        service.close()


# -- the v1 seed's command -------------------------------------------------------------------------------
@pytest.mark.slow
def test_seed_command_serves_the_page_and_health(chatty_model_dir):
    from ovis.ports import free_port

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "ovis/serve/server.py", "--model_path", str(chatty_model_dir), "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{proc.stdout.read()}"
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as response:
                    health = response.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up in 180 s"
                time.sleep(0.5)
        assert '"status":"ok"' in health.replace(" ", "") and Path(chatty_model_dir).name in health
        with urllib.request.urlopen(base + "/", timeout=30) as response:
            assert response.status == 200
            page = response.read().decode()
        assert "gradio" in page.lower() and "Ovis · " in page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- a real browser ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_headless_browser_chat_with_an_image(server, service, tmp_path, repo_script):
    tool = repo_script("docs/make_screenshot.py")
    if (why := tool.browser_missing()) is not None:
        pytest.skip(f"no headless browser: {why}")
    from selenium.webdriver.common.by import By

    picture, question = tool.scene_picture(tmp_path / "scene.png", size=96)
    reply = expected(service, [{"role": "user", "content": "<image>\n" + question}], [picture])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    driver = tool.start_chrome(tmp_path / "chrome", width=1280, height=900)
    try:
        tool.open_chat(driver, server.url + "/")
        shown = tool.ask(driver, question, [picture])
        assert shown.strip(), "the reply is empty"
        # The page renders the reply as Markdown and drops control characters: compare the visible words.
        assert _visible(shown) == _visible(reply)
        users = driver.find_elements(By.CSS_SELECTOR, "[data-testid=user]")
        assert any(u.find_elements(By.CSS_SELECTOR, "img") for u in users), "the uploaded image is not shown"
        assert question in [u.text for u in users]
        driver.save_screenshot(str(tmp_path / "web-ui.png"))

        # A broken upload: an error notice, the message goes back to the textbox, the chat is unchanged.
        before = tool.bot_texts(driver)
        tool.send(driver, "And this?", [bad])
        notice = tool.wait_for(lambda: " ".join(t.text for t in driver.find_elements(
            By.CSS_SELECTOR, "[data-testid=toast-body]")).strip(), 60, "the error notice")
        assert "could not be decoded as an image" in notice and "broken.png" in notice
        textbox = driver.find_element(By.CSS_SELECTOR, tool.TEXTBOX)
        tool.wait_for(lambda: textbox.get_attribute("disabled") is None, 30, "the textbox to be enabled again")
        tool.wait_for(lambda: textbox.get_attribute("value") == "And this?", 30, "the message to come back")
        assert tool.bot_texts(driver) == before
        assert "And this?" not in [u.text for u in driver.find_elements(By.CSS_SELECTOR, "[data-testid=user]")]
        for remove in driver.find_elements(By.CSS_SELECTOR, "[aria-label='Remove file']"):
            remove.click()
        follow_up = tool.ask(driver, "Tell me more.")
        assert follow_up.strip()
        # The browser sends the history back as the Chatbot shows it (inspect.cleandoc: trimmed, dedented).
        conversation = [{"role": "user", "content": "<image>\n" + question},
                        {"role": "assistant", "content": inspect.cleandoc(reply)},
                        {"role": "user", "content": "Tell me more."}]
        assert _visible(follow_up) == _visible(expected(service, conversation, [picture]))
    finally:
        driver.quit()
    assert (tmp_path / "web-ui.png").stat().st_size > 10_000


def _visible(text: str) -> str:
    """Letters and digits only: what survives Markdown rendering of arbitrary model output."""
    return "".join(ch for ch in text if ch.isalnum())


def test_a_tiled_model_gets_a_tiles_slider_that_reaches_the_prompt(service, tmp_path):
    """The chat's settings offer max_partition for a tiled model (none for v1), and the value sets
    how many positions each image takes, as max_partition does over the API."""
    import gradio as gr

    import ovis
    from ovis.serve.runner import OvisRunner, RunnerArguments
    from ovis.serve.service import Service
    from ovis.serve.web import _prepare, _settings_inputs

    def tiles_sliders(of):
        return [c for c in _settings_inputs(of) if isinstance(c, gr.Slider) and "max_partition" in c.label]

    assert service.runner.model.config.image_layout == "v1" and not tiles_sliders(service)
    tiled_dir = tmp_path / "tiled"
    ovis.compose(vit="clip-toy", llm="qwen-toy", out=tiled_dir, visual_vocab_size=64, max_partition=4)
    picture = write_picture(tmp_path / "wide.png", 3, size=(256, 64))
    tiled = Service.wrap(OvisRunner(RunnerArguments(model_path=str(tiled_dir), dtype="float32")))
    try:
        sliders = tiles_sliders(tiled)
        assert len(sliders) == 1 and sliders[0].value == 4
        message = {"text": "What is it?", "files": [str(picture)]}
        lengths = {
            tiles: len(_prepare(tiled, message, [], 4, False, None, None, None, "", tiles).sample.input_ids)
            for tiles in (1, 4)
        }
        assert lengths[4] > lengths[1], lengths  # four tiles and a global view take more positions than one
    finally:
        tiled.close()


def test_an_attached_video_becomes_its_sampled_frames(service, tmp_path):
    """A video attached in the chat is read as the API reads a video_url part: frames sampled
    uniformly, each one image, in place of its marker; a broken one is refused by name."""
    av = pytest.importorskip("av")
    from ovis.interfaces.video import DEFAULT_NUM_FRAMES, load_video
    from ovis.serve.errors import RequestError
    from ovis.serve.web import _prepare

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_image(Image.new("RGB", (32, 32), (20 * i, 255 - 20 * i, 90)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    picture = write_picture(tmp_path / "still.png", 5)
    message = {"text": "What changes?", "files": [str(picture), str(clip)]}
    prepared = _prepare(service, message, [], 4, False, None, None, None, "")
    frames = load_video(str(clip), DEFAULT_NUM_FRAMES)
    expected = service.runner.prepare([{"role": "user", "content": "<image>\n<video>\nWhat changes?"}],
                                      [picture], videos=[frames])
    assert prepared.sample.num_images == 1 + DEFAULT_NUM_FRAMES
    assert prepared.sample.input_ids == expected.sample.input_ids
    assert torch.equal(prepared.sample.pixel_values, expected.sample.pixel_values)

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[:200])
    with pytest.raises(RequestError, match=r"broken\.mp4"):
        _prepare(service, {"text": "And this?", "files": [str(broken)]}, [], 4, False, None, None, None, "")
