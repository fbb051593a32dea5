"""
The official C{ollama} library against C{twistd llamaswap} and the fake
upstream: every call an Ollama client makes, unchanged.
"""

from __future__ import annotations

import pytest

from tests.helpers import fake, free_port, free_port_range
from tests.test_twistd_newest import twistd, wait_ready  # noqa: F401 (fixture)

ollama = pytest.importorskip("ollama")


def test_the_ollama_library_works_unchanged(twistd, tmp_path):  # noqa: F811
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"startPort: {free_port_range(2)}\napiKeys: [sk-local]\n"
        "models:\n"
        f"  llama3:\n    cmd: {fake('llama3')}\n    metadata: {{family: llama}}\n"
        f"  nomic-embed:\n    cmd: {fake('nomic-embed')}\n"
    )
    process = twistd("-c", str(config), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)
    client = ollama.Client(host=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer sk-local"})
    assert sorted(model.model for model in client.list().models) == ["llama3", "nomic-embed"]
    assert client.ps().models == []
    shown = client.show("llama3")
    assert shown.modelinfo["family"] == "llama" and "completion" in shown.capabilities
    answer = client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    assert answer.message.content.startswith("llama3-0") and answer.done and answer.eval_count == 10
    pieces = list(client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(piece.message.content for piece in pieces).startswith("llama3-0 llama3-1")
    assert pieces[-1].done and pieces[-1].done_reason == "stop" and not pieces[0].done
    assert [model.model for model in client.ps().models] == ["llama3"]
    generated = client.generate(model="llama3", prompt="hello", options={"temperature": 0})
    assert generated.response.startswith("llama3-0") and generated.done
    streamed = "".join(piece.response for piece in client.generate(model="llama3", prompt="hello", stream=True))
    assert streamed.startswith("llama3-0")
    embedded = client.embed(model="nomic-embed", input=["one", "two"])
    assert len(embedded.embeddings) == 2 and isinstance(embedded.embeddings[0][0], float)
    assert isinstance(client.embeddings(model="nomic-embed", prompt="one").embedding[0], float)
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("llama3")
    assert refused.value.status_code == 501 and "configure" in refused.value.error
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="ghost", messages=[])
    assert unknown.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as unauthorised:
        ollama.Client(host=f"http://127.0.0.1:{port}").list()
    assert unauthorised.value.status_code == 401
