"""
Smoke tests on real sockets and real child processes: what the in-memory
tests cannot show -- the official openai SDK over HTTP, a stream through
the kernel's buffers, and memory under a stalled TCP reader.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import psutil
import pytest
import pytest_twisted
import treq
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread

from tests.helpers import fake, json_of, sleep

CONFIG = f"""
models:
  m:
    cmd: {fake("m")}
    aliases: [gpt-4o-mini]
  other:
    cmd: {fake("other")}
"""


@pytest_twisted.inlineCallbacks
def test_chat_stream_and_swap_through_real_processes(llamaswap):
    server = llamaswap(CONFIG)
    response = yield server.chat("m")
    assert (yield json_of(response))["responseMessage"] == "m"
    pid = server.process("m").pid
    response = yield server.chat("other", stream=True)
    text = yield response.text()
    contents = [
        json.loads(line[6:])["choices"][0]["delta"].get("content")
        for line in text.split("\n")
        if line.startswith("data: {") and '"content"' in line
    ]
    assert contents == [f"other-{index} " for index in range(10)]
    assert server.state("m") == "stopped"  # swapped out
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest_twisted.inlineCallbacks
def test_slow_reader_pauses_the_upstream_and_memory_stays_bounded(llamaswap):
    """
    300 MB flow through the proxy to a client that stops reading for two
    seconds: the proxy must pause the upstream instead of buffering.
    """
    server = llamaswap(CONFIG)
    yield server.chat("m")
    me = psutil.Process()
    before = me.memory_info().rss
    client = socket.create_connection(("127.0.0.1", server.port))
    client.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    total = 300 * 1024 * 1024
    client.sendall(
        f"GET /upstream/m/big?total={total}&chunk=65536&length=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    yield sleep(2.0)  # not reading at all
    during = me.memory_info().rss
    assert during - before < 40 * 1024 * 1024, f"proxy grew by {(during - before) >> 20} MB"
    received = 0
    while received < total:
        try:
            data = client.recv(1024 * 1024)
        except BlockingIOError:
            yield sleep(0.001)
            continue
        if not data:
            break
        received += len(data)
    client.close()
    assert received > total  # headers + the whole body
    assert me.memory_info().rss - before < 60 * 1024 * 1024


# ---------------------------------------------------------------- the openai SDK


@pytest.fixture
def openai_client():
    openai = pytest.importorskip("openai")

    def make(server):
        return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=30)

    return make


@pytest_twisted.inlineCallbacks
def test_openai_sdk_chat_plain_and_streamed(llamaswap, openai_client):
    server = llamaswap(CONFIG)
    client = openai_client(server)
    completion = yield deferToThread(
        client.chat.completions.create, model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content.startswith("m-0 m-1")
    assert completion.usage.completion_tokens == 10

    def stream():
        chunks = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk for chunk in chunks]

    chunks = yield deferToThread(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "".join(f"m-{index} " for index in range(10))
    assert chunks[-1].usage.total_tokens > 0


@pytest_twisted.inlineCallbacks
def test_openai_sdk_completions_embeddings_and_transcription(llamaswap, openai_client):
    server = llamaswap(CONFIG)
    client = openai_client(server)
    completion = yield deferToThread(client.completions.create, model="m", prompt="once upon a time")
    assert completion.choices[0].text.startswith("m-0")
    embeddings = yield deferToThread(client.embeddings.create, model="m", input=["a", "bb"])
    assert len(embeddings.data) == 2
    assert len(embeddings.data[0].embedding) == 8
    audio = io.BytesIO(b"RIFF" + b"\x00" * 4000)
    audio.name = "speech.wav"
    transcription = yield deferToThread(client.audio.transcriptions.create, model="m", file=audio)
    assert transcription.text == "The length of the file is 4004 bytes"
    speech = yield deferToThread(client.audio.speech.create, model="m", voice="alloy", input="hello")
    assert speech.content.startswith(b"RIFF")
    models = yield deferToThread(client.models.list)
    assert [model.id for model in models.data] == ["m", "other"]


@pytest_twisted.inlineCallbacks
def test_openai_sdk_responses_and_images(llamaswap, openai_client):
    server = llamaswap(CONFIG)
    client = openai_client(server)
    response = yield deferToThread(client.responses.create, model="m", input="hello")
    assert response.output_text == "".join(f"m-{index} " for index in range(10))
    assert response.usage.output_tokens == 10

    def stream():
        return [event for event in client.responses.create(model="m", input="hello", stream=True)]

    events = yield deferToThread(stream)
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == "".join(f"m-{index} " for index in range(10))
    assert events[-1].type == "response.completed" and events[-1].response.usage.input_tokens > 0
    images = yield deferToThread(client.images.generate, model="m", prompt="a cat", n=2)
    assert len(images.data) == 2 and images.data[0].b64_json
    picture = io.BytesIO(b"\x89PNG fake")
    picture.name = "cat.png"
    edited = yield deferToThread(client.images.edit, model="other", image=picture, prompt="add a hat")
    assert edited.data[0].revised_prompt == "other image 0"


@pytest_twisted.inlineCallbacks
def test_anthropic_sdk_messages_streamed_and_counted(llamaswap):
    anthropic = pytest.importorskip("anthropic")
    server = llamaswap(CONFIG)
    client = anthropic.Anthropic(base_url=server.url, api_key="not-needed", max_retries=0, timeout=30)
    message = yield deferToThread(
        client.messages.create, model="m", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "".join(f"m-{index} " for index in range(10))
    assert message.usage.output_tokens == 10

    def stream():
        with client.messages.stream(model="other", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as events:
            return "".join(events.text_stream), events.get_final_message()

    text, final = yield deferToThread(stream)
    assert text == "".join(f"other-{index} " for index in range(10))
    assert final.usage.output_tokens == 10
    counted = yield deferToThread(
        client.messages.count_tokens, model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert counted.input_tokens > 0


ERRORS_CONFIG = f"""
models:
  m:
    cmd: {fake("m")}
    concurrencyLimit: 1
  broken:
    cmd: {fake("broken", "--crash-after", "0")}
"""


@pytest_twisted.inlineCallbacks
def test_openai_sdk_raises_the_right_exceptions_with_our_messages(llamaswap, openai_client):
    import openai

    server = llamaswap(ERRORS_CONFIG)
    client = openai_client(server)

    def failure_of(**request):
        try:
            client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], **request)
        except openai.APIStatusError as error:
            return error
        raise AssertionError("no error")

    error = yield deferToThread(failure_of, model="no-such-model")
    assert isinstance(error, openai.NotFoundError) and error.status_code == 404
    # the SDK found our message where OpenAI puts it
    assert error.message == "Error code: 404 - could not find real modelID for no-such-model"
    assert error.body["message"] == "could not find real modelID for no-such-model"
    assert error.code == "not_found" and error.type == "invalid_request_error"
    error = yield deferToThread(failure_of, model="")
    assert isinstance(error, openai.BadRequestError)
    assert error.body["message"] == "missing or invalid 'model' key"
    error = yield deferToThread(failure_of, model="broken")
    assert error.status_code == 502 and error.body["message"].startswith("unable to start process")
    # one slow request takes m's only place: the next is refused at once
    slow = treq.post(server.url + "/v1/chat/completions?wait=2", json={"model": "m"})
    yield sleep(0.5)
    error = yield deferToThread(failure_of, model="m")
    assert isinstance(error, openai.RateLimitError)
    assert error.body["message"] == "Too many requests" and error.code == "concurrency_limit"
    yield (yield slow).content()
    # while llamaswap stops, a request gets 503
    server.service.manager.scheduler.close()
    error = yield deferToThread(failure_of, model="m")
    assert isinstance(error, openai.InternalServerError) and error.status_code == 503
    assert error.body["message"] == "llamaswap is shutting down"


@pytest_twisted.inlineCallbacks
def test_constant_memory_while_streaming_a_50mb_sse_response(llamaswap):
    server = llamaswap(CONFIG)
    yield server.chat("m")
    me = psutil.Process()
    before = me.memory_info().rss
    peak = [0]
    received = {"size": 0, "tail": b""}

    def sample():
        peak[0] = max(peak[0], me.memory_info().rss)

    def collect(data):
        received["size"] += len(data)
        received["tail"] = (received["tail"] + data)[-2000:]

    sampler = LoopingCall(sample)
    sampler.start(0.02)
    response = yield server.post(
        "/v1/chat/completions?chunks=800&chunk_bytes=65536", json={"model": "m", "stream": True}, unbuffered=True
    )
    yield treq.collect(response, collect)
    sampler.stop()
    assert received["size"] > 50 * 1024 * 1024
    assert b"data: [DONE]" in received["tail"]
    assert peak[0] - before < 30 * 1024 * 1024, f"grew by {(peak[0] - before) >> 20} MB"
    yield sleep(0.05)  # recorded once the answer is on its way
    assert server.service.activity.metrics()[-1]["output_tokens"] == 800


def anonymous_memory() -> int:
    """
    This process's private (not file-backed) resident memory: a spooled
    upload mapped from its temporary file does not count, a copy would.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest_twisted.inlineCallbacks
def test_a_50mb_image_upload_is_relayed_from_the_spool(llamaswap, tmp_path):
    server = llamaswap(CONFIG)
    yield server.chat("m")
    boundary = "llamaswap-upload"
    upload = tmp_path / "upload.bin"
    with open(upload, "wb") as handle:
        handle.write(f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'.encode())
        handle.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'.encode())
        handle.write(b"Content-Type: image/png\r\n\r\n")
        for _ in range(50):
            handle.write(b"\x89PNG" * (256 * 1024))  # 1 MB
        handle.write(f"\r\n--{boundary}--\r\n".encode())
    before = anonymous_memory()
    peak = [before]
    sampling = threading.Event()

    def sample():  # on a thread: a copy made and dropped within one reactor turn still shows
        while not sampling.is_set():
            peak[0] = max(peak[0], anonymous_memory())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(upload, "rb") as body:
            response = yield server.post(
                "/v1/images/edits", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
            )
            document = yield json_of(response)
    finally:
        sampling.set()
        sampler.join()
    assert response.code == 200 and document["responder"] == "m" and len(document["data"]) == 1
    assert peak[0] - before < 20 * 1024 * 1024, f"grew by {(peak[0] - before) >> 20} MB"
    # without a model, the same upload is refused with a clear error
    with open(upload, "rb") as body:
        data = body.read().replace(b'name="model"', b'name="prompt"', 1)
    response = yield server.post(
        "/v1/images/edits", data=data, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.code == 400
    assert (yield json_of(response))["error"]["message"] == "missing or invalid 'model' parameter in form data"
