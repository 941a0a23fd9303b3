"""``ovis serve`` fit to put on a network: the API key, the HTTP limits (body size while it streams
in, body read and request timeouts, admission with 503 + Retry-After), the JSON access log, and the
warning for an exposed server without a key.

The limits are tested twice: on :class:`~ovis.serve.http_limits.HttpGuard` alone, with a stand-in ASGI
app that counts what it reads (fast, exact), and through a real server on raw sockets, where a
client sends what no well-behaved HTTP library would (a body that never ends, one that stalls)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time

import pytest

from ovis.errors import OvisError
from ovis.serve.access_log import AccessLog
from ovis.serve.auth import KEY_ENV, gradio_login, is_loopback, key_matches
from ovis.serve.http_limits import HttpGuard, HttpLimits
from ovis.serve.options import ServeOptions

KEY = "s3cret-key-for-tests"
MODEL = "chatty"


# -- HttpGuard alone, in front of a stand-in app -----------------------------------------------------------
class Recorder:
    """An ASGI app that reads the whole body, counting bytes, then answers 200 (chat completions
    wait for ``hold`` first)."""

    def __init__(self, *, hold: asyncio.Event | None = None, status: int = 200) -> None:
        self.read = 0
        self.calls = 0
        self.hold = hold
        self.status = status

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            self.read += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if self.hold is not None and scope["path"] == "/v1/chat/completions":
            await self.hold.wait()
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"done", "more_body": False})


def http_scope(method: str = "POST", path: str = "/v1/chat/completions", headers=()) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": list(headers), "client": ("10.0.0.7", 5)}


class Client:
    """The server side of one connection: hands out body pieces on demand, collects the response."""

    def __init__(self, pieces, *, stall_after: int | None = None) -> None:
        self.pieces = iter(pieces)
        self.pulled = 0  # bytes the guard asked for
        self.stall_after = stall_after
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if self.stall_after is not None and self.pulled >= self.stall_after:
            await asyncio.Event().wait()  # the client stops sending, connection open
        piece = next(self.pieces, None)
        if piece is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        self.pulled += len(piece)
        return {"type": "http.request", "body": piece, "more_body": True}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(next(m for m in self.sent if m["type"] == "http.response.start")["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def error(self) -> dict:
        return json.loads(self.body)["error"]


def endless(piece: int = 64 * 1024):
    """A body that never ends (as long as someone keeps reading it)."""
    while True:
        yield b"x" * piece


def guarded(app, **limits) -> HttpGuard:
    max_body = limits.pop("max_body_bytes", 1_000_000)
    return HttpGuard(app, limits=HttpLimits(**limits), max_body_bytes=max_body, exempt=("/health",))


def test_a_declared_length_over_the_limit_is_413_before_reading():
    app, client = Recorder(), Client(endless())
    headers = [(b"content-length", b"5000000")]
    asyncio.run(guarded(app)(http_scope(headers=headers), client.receive, client.send))
    assert (
        client.status == 413 and client.error()["code"] == "body_too_large" and "5,000,000" in client.error()["message"]
    )
    assert app.calls == 0 and client.pulled == 0
    assert client.headers[b"connection"] == b"close"  # the unread body is never read


def test_a_streamed_body_is_cut_off_at_the_limit_not_read_to_its_end():
    app, client = Recorder(), Client(endless())
    asyncio.run(guarded(app, max_body_bytes=1_000_000)(http_scope(), client.receive, client.send))
    assert client.status == 413 and "1,000,000" in client.error()["message"]
    # the app got no more than the limit, and the guard stopped pulling one piece past it:
    # memory is bounded by the limit, whatever the client sends
    assert app.read <= 1_000_000 and client.pulled <= 1_000_000 + 64 * 1024


def test_a_body_within_the_limit_passes_untouched():
    app, client = Recorder(), Client([b"a" * 1000] * 5)
    asyncio.run(guarded(app)(http_scope(), client.receive, client.send))
    assert client.status == 200 and client.body == b"done" and app.read == 5000


def test_a_stalled_body_is_408_after_the_body_timeout():
    app, client = Recorder(), Client(endless(1000), stall_after=3000)
    started = time.monotonic()
    asyncio.run(guarded(app, body_timeout_s=0.2)(http_scope(), client.receive, client.send))
    assert client.status == 408 and client.error()["code"] == "body_timeout"
    assert client.headers[b"connection"] == b"close"
    assert time.monotonic() - started < 30  # not held forever (the test's own guard; no absolute timing)


def test_a_request_over_its_time_is_504_and_the_app_is_stopped():
    stopped = []

    async def slow(scope, receive, send):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped.append(True)
            raise

    client = Client([])
    asyncio.run(guarded(slow, request_timeout_s=0.2)(http_scope(method="GET"), client.receive, client.send))
    assert client.status == 504 and client.error()["type"] == "server_error" and stopped == [True]


def test_a_stream_over_its_time_is_ended_where_it_is():
    async def streaming(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.sleep(3600)

    client = Client([])
    asyncio.run(guarded(streaming, request_timeout_s=0.2)(http_scope(method="GET"), client.receive, client.send))
    assert client.status == 200 and client.body == b"data: 1\n\n"
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_admission_runs_some_queues_some_and_refuses_the_rest_with_retry_after():
    async def scenario():
        hold = asyncio.Event()
        app = Recorder(hold=hold)
        guard = guarded(app, max_concurrent_requests=2, max_queued_requests=1, retry_after_s=7)
        clients = [Client([b"{}"]) for _ in range(4)]
        tasks = [asyncio.ensure_future(guard(http_scope(), c.receive, c.send)) for c in clients[:3]]
        await asyncio.sleep(0.05)
        assert (guard.admission.active, guard.admission.waiting) == (2, 1)
        await guard(http_scope(), clients[3].receive, clients[3].send)  # the fourth: nowhere to wait
        # a GET (an asset, a model card, an event stream) and the health check are not queued
        light = Client([])
        await guard(http_scope(method="GET", path="/v1/models"), light.receive, light.send)
        health = Client([])
        await guard(http_scope(path="/health"), health.receive, health.send)
        hold.set()
        await asyncio.gather(*tasks)
        return guard, clients, light, health

    guard, clients, light, health = asyncio.run(scenario())
    assert [c.status for c in clients] == [200, 200, 200, 503]
    assert clients[3].headers[b"retry-after"] == b"7" and clients[3].error()["code"] == "server_busy"
    assert light.status == 200 and health.status == 200
    assert guard.max_active == 2 and guard.admission.active == 0


def test_a_waiting_request_that_times_out_leaves_the_queue():
    async def scenario():
        hold = asyncio.Event()
        guard = guarded(Recorder(hold=hold), max_concurrent_requests=1, max_queued_requests=4, request_timeout_s=0.3)
        first, second = Client([b"{}"]), Client([b"{}"])
        running = asyncio.ensure_future(guard(http_scope(), first.receive, first.send))
        await asyncio.sleep(0.05)
        await guard(http_scope(), second.receive, second.send)  # waits, then runs out of time
        waiting = guard.admission.waiting
        hold.set()
        await running
        return first, second, waiting, guard

    first, second, waiting, guard = asyncio.run(scenario())
    assert second.status == 504 and waiting == 0
    assert first.status == 504  # it held its slot past the time too
    assert guard.admission.active == 0


def test_the_apps_own_503_gets_retry_after():
    app, client = Recorder(status=503), Client([b"{}"])
    asyncio.run(guarded(app, retry_after_s=3)(http_scope(), client.receive, client.send))
    assert client.status == 503 and client.headers[b"retry-after"] == b"3"


def test_the_default_body_limit_is_capped_and_can_be_set():
    from ovis.serve.limits import DEFAULT_BODY_CAP, ServeLimits

    # 8 images of 10 MiB would need ~107 MB per body; buffered up to 64 at once that is too much
    assert ServeLimits().body_limit == DEFAULT_BODY_CAP == 32 * 2**20
    small = ServeLimits(max_images=1, max_image_bytes=100_000)
    assert small.body_limit < DEFAULT_BODY_CAP and small.body_limit > 100_000 * 4 // 3
    assert ServeLimits(max_body_bytes=10 * 2**30).body_limit == 10 * 2**30


def test_the_access_log_goes_to_a_file_with_the_client_address_when_asked(tmp_path):
    from ovis.serve.access_log import AccessLogMiddleware

    path = tmp_path / "access.jsonl"
    log = AccessLog(path, client_address=True)
    client = Client([b'{"messages": [{"content": "private words"}]}'])
    guard = guarded(Recorder())
    asyncio.run(AccessLogMiddleware(guard, log=log)(http_scope(headers=[(b"x", b"y")]), client.receive, client.send))
    too_big = Client(endless())
    asyncio.run(
        AccessLogMiddleware(guarded(Recorder(), max_body_bytes=10), log=log)(
            http_scope(), too_big.receive, too_big.send
        )
    )
    log.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["status"] == 200 and first["client"] == "10.0.0.7" and "private" not in path.read_text()
    assert second["status"] == 413 and second["refused"] == "body_too_large"
    assert ServeOptions(model_path="m", access_log="off").access_log is None
    assert ServeOptions(model_path="m").access_log == "-"


# -- the key -----------------------------------------------------------------------------------------------
def test_keys_are_compared_with_compare_digest(monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert key_matches(KEY, KEY) and not key_matches(KEY[:-1] + "X", KEY) and not key_matches(None, KEY)
    assert len(calls) == 2
    login = gradio_login(KEY)
    assert login("anyone", KEY) and not login("anyone", "wrong-key-123") and len(calls) == 4


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.3.2.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("myhost.example", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback
    assert ServeOptions(model_path="m", host=host).exposed_without_key is not loopback
    assert not ServeOptions(model_path="m", host=host, api_key=KEY).exposed_without_key


@pytest.mark.parametrize(
    "key, problem",
    [("short", "at least 8"), ("has a space in it", "without spaces"), ("tab\tinside-key", "without spaces")],
)
def test_an_unusable_key_is_refused_without_echoing_it(key, problem):
    with pytest.raises(OvisError, match=problem) as refused:
        ServeOptions(model_path="m", api_key=key)
    assert key not in str(refused.value)
    options = ServeOptions(model_path="m", api_key=KEY)
    assert KEY not in repr(options) and options.api_key.get_secret_value() == KEY


@pytest.mark.parametrize(
    "http, named",
    [
        ({"request_timeout_s": 0}, "http.request_timeout_s"),
        ({"body_timeout_s": -1}, "http.body_timeout_s"),
        ({"max_concurrent_requests": 0}, "http.max_concurrent_requests"),
        ({"max_queued_requests": -1}, "http"),
    ],
)
def test_bad_http_limits_name_the_field(http, named):
    with pytest.raises(OvisError, match="invalid server options") as refused:
        ServeOptions(model_path="m", http=http)
    assert named in str(refused.value)


def test_serving_beyond_this_machine_without_a_key_warns_loudly(tmp_path, capsys):
    from ovis.errors import InputFileError
    from ovis.serve.server import serve

    with pytest.raises(InputFileError):  # the warning comes first, before the model is even looked at
        serve(ServeOptions(model_path=tmp_path / "missing", host="0.0.0.0", ui=False))
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err and "WITHOUT an API key" in err
    with pytest.raises(InputFileError):
        serve(ServeOptions(model_path=tmp_path / "missing", host="0.0.0.0", ui=False, api_key=KEY))
    with pytest.raises(InputFileError):
        serve(ServeOptions(model_path=tmp_path / "missing", ui=False))
    assert "WARNING" not in capsys.readouterr().err


def test_the_cli_takes_the_key_from_a_flag_a_file_or_the_environment(tmp_path, monkeypatch, capsys):
    from ovis.cli import main

    given = []
    monkeypatch.setattr("ovis.serve.server.serve", lambda options: given.append(options) or 0)
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert main(["serve", "--model", "m"]) == 0 and given[-1].api_key is None
    monkeypatch.setenv(KEY_ENV, KEY)
    assert main(["serve", "--model", "m"]) == 0 and given[-1].api_key.get_secret_value() == KEY
    key_file = tmp_path / "key"
    key_file.write_text("from-the-file-123\n")
    assert main(["serve", "--model", "m", "--api-key-file", str(key_file)]) == 0
    assert given[-1].api_key.get_secret_value() == "from-the-file-123"
    assert (
        main(
            [
                "serve",
                "--model",
                "m",
                "--api-key",
                "from-the-flag-123",
                "--request-timeout",
                "9",
                "--body-timeout",
                "2",
                "--max-concurrent-requests",
                "3",
                "--max-queued-requests",
                "0",
                "--max-body-bytes",
                "4096",
                "--access-log",
                "off",
                "--access-log-client",
            ]
        )
        == 0
    )
    assert given[-1] == ServeOptions(
        model_path="m",
        api_key="from-the-flag-123",
        access_log=None,
        access_log_client=True,
        http={"request_timeout_s": 9, "body_timeout_s": 2, "max_concurrent_requests": 3, "max_queued_requests": 0},
        limits={"max_body_bytes": 4096},
    )
    capsys.readouterr()
    assert main(["serve", "--model", "m", "--api-key-file", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --api-key-file") and "nope" in err and "Traceback" not in err
    assert main(["serve", "--model", "m", "--api-key", "short"]) == 2
    assert "at least 8" in capsys.readouterr().err


# -- through a real server -----------------------------------------------------------------------------
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def log_stream():
    return io.StringIO()


@pytest.fixture(scope="module")
def keyed(chatty_model_dir, served, log_stream):
    """A server with a key, a small body limit, short timeouts and an access log in memory."""
    from ovis.serve.limits import ServeLimits

    build = {
        "ui": False,
        "api_key": KEY,
        "access_log": AccessLog(log_stream),
        "http": HttpLimits(body_timeout_s=0.5, max_concurrent_requests=8),
    }
    with served(
        chatty_model_dir,
        runner={"max_new_tokens": 4},
        model_name=MODEL,
        build=build,
        limits=ServeLimits(max_body_bytes=200_000, max_new_tokens=8),
    ) as pair:
        yield pair


@pytest.fixture(scope="module")
def server(keyed):
    return keyed[1]


def chat(text: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 3, **extra}


def log_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_api_wants_the_key(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        missing = http.get("/v1/models")
        wrong = http.get("/v1/models", headers={"Authorization": "Bearer not-the-key"})
        refused_body = http.post("/v1/chat/completions", json=chat("hi"))
        right = http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        health_open = http.get("/health").json()
        health_keyed = http.get("/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in wrong.text and refused_body.status_code == 401
    assert right.status_code == 200 and right.json()["data"][0]["id"] == MODEL
    assert health_open == {"status": "ok"} and health_keyed["model"] == MODEL

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    assert client.chat.completions.create(**chat("hello there")).choices[0].message.content is not None
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key-1", max_retries=0).models.list()


def test_the_access_log_has_one_json_line_per_request_and_no_message_text(server, log_stream):
    secret_words = "zebra-cucumber-lighthouse"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    log_stream.seek(0)
    log_stream.truncate()
    reply = client.chat.completions.create(**chat(secret_words))
    pieces = list(client.chat.completions.create(**chat(secret_words + " again"), stream=True))
    with httpx.Client(base_url=server.url, timeout=60) as http:
        http.get("/v1/models?key=" + KEY)  # a query string is never logged (nor is a key)
    deadline = time.monotonic() + 10
    while len(log_stream.getvalue().splitlines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    text = log_stream.getvalue()
    assert secret_words not in text and KEY not in text and "?" not in text
    plain, streamed, refused = log_lines(log_stream)
    assert plain["method"] == "POST" and plain["path"] == "/v1/chat/completions" and plain["status"] == 200
    assert plain["prompt_tokens"] == reply.usage.prompt_tokens
    assert plain["completion_tokens"] == reply.usage.completion_tokens
    assert isinstance(plain["latency_ms"], float) and plain["latency_ms"] >= 0
    assert streamed["status"] == 200 and streamed["completion_tokens"] >= 1 and pieces
    assert refused["status"] == 401 and refused["refused"] == "invalid_api_key" and refused["path"] == "/v1/models"
    assert "client" not in plain  # only with access_log_client


def raw_request(server, head: str) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(head.encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes, bool]:
    """The status, everything the server sent, and whether it then closed the connection (not just
    went quiet for the socket's 30 s timeout)."""
    data, closed = b"", False
    try:
        while chunk := sock.recv(65536):
            data += chunk
        closed = True
    except ConnectionResetError:
        closed = True
    except OSError:
        pass
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data, closed


def test_a_never_ending_upload_is_refused_at_the_limit(server):
    """A chunked body with no declared length: 413 arrives while the client is still sending,
    after about the limit (200 kB) of a body that would otherwise be endless."""
    sock = raw_request(
        server,
        (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
    )
    piece = b"x" * 16384
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    give_up = 200 * 200_000  # 40 MB: far more than the sockets' buffers on both sides can hold
    sent, pending, answer = 0, frame, b""
    sock.setblocking(False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sent < give_up:
        try:
            data = sock.recv(65536)
            if not data:
                break  # the server closed the connection after answering
            answer += data
            if b"\r\n\r\n" in answer:
                break
        except BlockingIOError:
            pass
        except OSError:
            break
        try:
            n = sock.send(pending)
            sent += n
            pending = pending[n:] or frame
        except BlockingIOError:
            time.sleep(0.005)
        except OSError:
            break  # the server closed its side; the answer is in our buffer
    sock.setblocking(True)
    sock.settimeout(10)
    try:
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    except OSError:
        pass
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # the body never ends: the answer came while the client was still sending it
    assert sent < give_up


def test_a_declared_length_over_the_limit_is_refused_before_the_body(server):
    sock = raw_request(
        server,
        (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: 100000000\r\n\r\n"
        ),
    )
    status, data, closed = read_response(sock)
    sock.close()
    assert status == 413 and b"100,000,000" in data and closed


def test_a_stalled_upload_does_not_hold_its_connection(server):
    sock = raw_request(
        server,
        (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n" + '{"model": "'
        ),
    )
    status, data, closed = read_response(sock)  # the client sends nothing more
    sock.close()
    assert status == 408 and b"body_timeout" in data and closed


def test_a_slow_generation_times_out_and_is_cancelled(chatty_model_dir, served):
    """The whole-request timeout through the API: 504 in OpenAI shape, and the batch stops the row."""
    build = {"ui": False, "http": HttpLimits(request_timeout_s=1.0)}
    with served(chatty_model_dir, runner={"max_new_tokens": 4}, model_name=MODEL, build=build) as (service, server):
        handles = []
        submit = service.submit
        release = threading.Event()

        def submit_and_keep(request, **kwargs):
            handles.append(submit(request, **kwargs))
            return handles[-1]

        real_generate = service.runner.generate

        def slow_generate(requests):
            release.wait(30)
            return real_generate(requests)

        service.submit = submit_and_keep
        service.runner.generate = slow_generate
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                response = http.post("/v1/chat/completions", json=chat("hi"))
        finally:
            release.set()
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "request_timeout"
        assert handles and handles[0].cancelled


def test_past_the_admission_limits_the_api_answers_503_with_retry_after(chatty_model_dir, served):
    build = {"ui": False, "http": HttpLimits(max_concurrent_requests=1, max_queued_requests=0, retry_after_s=2)}
    with served(chatty_model_dir, runner={"max_new_tokens": 4}, model_name=MODEL, build=build) as (service, server):
        release, started = threading.Event(), threading.Event()
        real_generate = service.runner.generate

        def held_generate(requests):
            started.set()
            release.wait(30)
            return real_generate(requests)

        service.runner.generate = held_generate
        results = {}

        def first():
            with httpx.Client(base_url=server.url, timeout=60) as http:
                results["first"] = http.post("/v1/chat/completions", json=chat("one"))

        thread = threading.Thread(target=first)
        thread.start()
        try:
            assert started.wait(30)
            with httpx.Client(base_url=server.url, timeout=60) as http:
                busy = http.post("/v1/chat/completions", json=chat("two"))
                models = http.get("/v1/models")  # a GET is not queued
        finally:
            release.set()
            thread.join(60)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert busy.json()["error"]["code"] == "server_busy" and models.status_code == 200
        assert results["first"].status_code == 200


# -- the web UI behind the key ---------------------------------------------------------------------------
def test_the_web_ui_asks_for_the_key_as_its_password(chatty_model_dir, served):
    pytest.importorskip("gradio")
    build = {"ui": True, "api_key": KEY}
    with served(chatty_model_dir, runner={"max_new_tokens": 4}, model_name=MODEL, build=build) as (_, server):
        with httpx.Client(base_url=server.url, timeout=60) as http:
            config = http.get("/config")
            upload = http.post("/gradio_api/upload", files={"files": ("a.png", b"abc", "image/png")})
            wrong = http.post("/login", data={"username": "me", "password": "not-the-key"})
        with httpx.Client(base_url=server.url, timeout=60) as http:
            login = http.post("/login", data={"username": "me", "password": KEY})
            config_after = http.get("/config")
        gradio_client = pytest.importorskip("gradio_client")
        reply = gradio_client.Client(server.url, auth=("me", KEY), verbose=False).predict(
            {"text": "hello", "files": []}, max_new_tokens=3, api_name="/chat"
        )
        with pytest.raises(Exception, match="(?i)login|auth|401|credentials"):
            gradio_client.Client(server.url, auth=("me", "not-the-key"), verbose=False)
    assert config.status_code == 401 and upload.status_code == 401
    assert wrong.status_code >= 400
    assert login.status_code == 200 and config_after.status_code == 200
    assert MODEL in config_after.text
    assert isinstance(reply, str) and reply  # the chat itself, through the login


def test_text_too_long_for_any_tokenization_is_refused_before_the_tokenizer(keyed, monkeypatch):
    """Megabytes of text cost the tokenizer far more memory than the body (a 100 MB message took a
    server past 20 GB): text longer than the prompt limit times the longest token is refused unread."""
    service, server = keyed
    prepared = []
    real_prepare = service.runner.prepare
    monkeypatch.setattr(service.runner, "prepare", lambda *a, **k: prepared.append(1) or real_prepare(*a, **k))
    most = service.prompt_limit * service._longest_token_chars
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        refused = http.post("/v1/chat/completions", json=chat("x" * (most + 1)))
        assert prepared == []
        fits = http.post("/v1/chat/completions", json=chat("hello"))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"
    assert "characters of text cannot fit" in refused.json()["error"]["message"]
    assert fits.status_code == 200 and prepared == [1]
