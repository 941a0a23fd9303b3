"""Take the web UI screenshot in docs/images/web-ui.png with a headless Chromium.

Serves ``--model_path`` in this process (web UI only, on 127.0.0.1), opens the chat in Chromium, uploads
a picture from the synthetic quick-start task, asks about it, waits for the streamed answer and saves a
``--width`` x ``--height`` screenshot::

    python docs/make_screenshot.py --model_path runs/quickstart/stage3/final --model-name ovis-quickstart
    python docs/make_screenshot.py --model_path DIR --out /tmp/ui.png --question "What shape is the red object?"

Needs ``selenium`` and Debian's ``chromium`` + ``chromedriver`` (``apt-get install chromium chromium-driver``).
``tests/test_serve_web.py`` drives the browser with the helpers below, so they stay working.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("OVIS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("OVIS_CHROMEDRIVER", "/usr/bin/chromedriver")
TEXTBOX = "textarea[data-testid=textbox]"
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
)


def browser_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).is_file() or shutil.which(path)):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    return None


def start_chrome(user_data_dir: str | Path, *, width: int = 1280, height: int = 900):
    """A headless Chromium whose page viewport is exactly ``width`` x ``height``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    # --window-size counts the (invisible) browser frame; pin the page's own size instead.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition()`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def open_chat(driver, url: str, timeout: float = 60) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, TEXTBOX), timeout, "the chat page")


def bot_texts(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, "[data-testid=bot]")]


def send(driver, text: str, files: Sequence[str | Path] = (), timeout: float = 120) -> None:
    """Attach ``files`` (waiting for each upload), type ``text`` and press the send button."""
    from selenium.webdriver.common.by import By

    thumbnail = "[aria-label='File thumbnail']"
    thumbnails = len(driver.find_elements(By.CSS_SELECTOR, thumbnail))
    for path in files:
        upload = driver.find_element(By.CSS_SELECTOR, "input[type=file][data-testid=file-upload]")
        upload.send_keys(str(Path(path).resolve()))
        thumbnails += 1
        wait_for(lambda n=thumbnails: len(driver.find_elements(By.CSS_SELECTOR, thumbnail)) >= n, timeout,
                 f"the upload of {path}")
        # Chromedriver adds to a <input multiple>'s file list; empty it so the next upload is alone.
        driver.execute_script("arguments[0].value = '';", upload)
    area = driver.find_element(By.CSS_SELECTOR, TEXTBOX)
    area.clear()
    area.send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "button[data-testid=submit-button]").click()


def wait_reply(driver, replies_before: int, timeout: float = 120) -> str:
    """The newest reply, once it has finished streaming."""
    from selenium.webdriver.common.by import By

    wait_for(lambda: len(bot_texts(driver)) > replies_before, timeout, "the reply to start")
    # Finished: the textbox is enabled again and the reply stopped changing.
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, TEXTBOX).get_attribute("disabled") is None, timeout,
             "the reply to finish")
    last: list[str] = []

    def settled() -> bool:
        texts = bot_texts(driver)
        same = texts == last
        last[:] = texts
        return same

    wait_for(settled, timeout, "the reply to settle", interval=0.3)
    return last[-1]


def ask(driver, text: str, files: Sequence[str | Path] = (), timeout: float = 120) -> str:
    """Send a message and return the reply once it has finished streaming."""
    before = len(bot_texts(driver))
    send(driver, text, files, timeout)
    return wait_reply(driver, before, timeout)


def scene_picture(path: str | Path, seed: int = 5, size: int = 256, kind: str = "count") -> tuple[Path, str]:
    """A picture from the synthetic quick-start task and a question of type ``kind`` about it."""
    from ovis.data.synth import draw_scene, question, random_scene

    rng = random.Random(seed)
    scene = random_scene(rng)
    draw_scene(scene, size, rng).save(path)
    return Path(path), question(kind, scene, rng).question


def screenshot(model_path: str | Path, out: str | Path, *, question: str | None = None, model_name: str | None = None,
               seed: int = 5, width: int = 1280, height: int = 900, max_new_tokens: int = 64) -> str:
    """Serve ``model_path``, ask about a picture in the browser, save the screenshot; returns the reply."""
    from ovis.serve.runner import OvisRunner, RunnerArguments
    from ovis.serve.server import ServerThread, build_app
    from ovis.serve.service import Service

    runner = OvisRunner(RunnerArguments(model_path=str(model_path), max_new_tokens=max_new_tokens))
    service = Service.wrap(runner, model_name=model_name or Path(model_path).resolve().name)
    with tempfile.TemporaryDirectory() as tmp, ServerThread(build_app(service, api=False)) as server:
        picture, default_question = scene_picture(Path(tmp) / "scene.png", seed)
        driver = start_chrome(Path(tmp) / "chrome", width=width, height=height)
        try:
            open_chat(driver, server.url + "/")
            reply = ask(driver, question or default_question, [picture])
            time.sleep(1.0)  # let the image and the last tokens render
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    service.close()
    return reply


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_path", "--model-path", "--model", dest="model_path", required=True)
    parser.add_argument("--out", default=str(REPO / "docs" / "images" / "web-ui.png"))
    parser.add_argument("--question", help="default: how many objects the synthetic picture has")
    parser.add_argument("--model-name", help="the name the page shows (default: the directory name, as the server)")
    parser.add_argument("--seed", type=int, default=5, help="which synthetic picture")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if (why := browser_missing()) is not None:
        print(f"cannot take the screenshot: {why}", file=sys.stderr)
        return 2
    reply = screenshot(args.model_path, args.out, question=args.question, model_name=args.model_name, seed=args.seed,
                       width=args.width, height=args.height, max_new_tokens=args.max_new_tokens)
    print(f"saved {args.out} (reply: {reply!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
