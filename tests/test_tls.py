"""
HTTPS end to end, with a throw-away self-signed certificate made here.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
import ssl
import subprocess
import textwrap
import time
import urllib.request

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody

from llamaswap.config import parse_config
from llamaswap.http.listen import endpoint_description
from llamaswap.service import LlamaswapService
from tests.helpers import fake, free_port, free_port_range
from tests.test_twistd import TWISTD


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


CONFIG = f"""
startPort: {free_port_range(4)}
models:
  m:
    cmd: {fake("m")}
"""


@pytest_twisted.inlineCallbacks
def test_https_requests_and_streams(certificate):
    cert_file, key_file = certificate
    port = free_port()
    service = LlamaswapService(
        parse_config(textwrap.dedent(CONFIG)),
        listen=endpoint_description(f"127.0.0.1:{port}", str(cert_file), str(key_file)),
        reactor=reactor,
    )
    service.startService()
    try:
        trust = Certificate.loadPEM(cert_file.read_bytes())
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust))
        response = yield agent.request(b"GET", f"https://localhost:{port}/health".encode())
        assert response.code == 200
        assert (yield readBody(response)) == b"OK"
        import io

        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        body = json.dumps({"model": "m", "stream": True}).encode()
        response = yield agent.request(
            b"POST",
            f"https://localhost:{port}/v1/chat/completions".encode(),
            Headers({b"content-type": [b"application/json"]}),
            FileBodyProducer(io.BytesIO(body)),
        )
        text = (yield readBody(response)).decode()
        assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
        assert text.rstrip().endswith("data: [DONE]")
        assert "m-9 " in text
    finally:
        yield service.stopService()


def test_twistd_with_tls_flags(certificate, tmp_path):
    cert_file, key_file = certificate
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    port = free_port()
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "llamaswap", "-c", str(config), "--listen", f"127.0.0.1:{port}",
         "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        context = ssl.create_default_context(cafile=str(cert_file))
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"https://localhost:{port}/health", context=context, timeout=2) as answer:
                    assert answer.read() == b"OK"
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/v1/chat/completions", data=json.dumps({"model": "m"}).encode()
        )
        with urllib.request.urlopen(request, context=context, timeout=20) as answer:
            assert json.loads(answer.read())["responseMessage"] == "m"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert "llamaswap listening on https://127.0.0.1:" in output


@pytest_twisted.inlineCallbacks
def test_an_https_peer(certificate, monkeypatch):
    """
    A peer reached over HTTPS, its certificate checked against the trusted
    roots (here our throw-away one, through OpenSSL's SSL_CERT_FILE).
    """
    cert_file, key_file = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    far_port = free_port()
    far = LlamaswapService(
        parse_config(textwrap.dedent(CONFIG)),
        listen=endpoint_description(f"127.0.0.1:{far_port}", str(cert_file), str(key_file)),
        reactor=reactor,
    )
    near_text = f"""
        peers:
          far:
            proxy: https://127.0.0.1:{far_port}
            models: [m]
        """
    near = LlamaswapService(parse_config(textwrap.dedent(near_text)), listen="tcp:0:interface=127.0.0.1", reactor=reactor)
    far.startService()
    near.startService()
    try:
        near_port = near.http.port.getHost().port
        body = json.dumps({"model": "far/m"}).encode()
        response = yield Agent(reactor).request(
            b"POST",
            f"http://127.0.0.1:{near_port}/v1/chat/completions".encode(),
            None,
            _bytes_producer(body),
        )
        answer = json.loads((yield readBody(response)))
        assert response.code == 200 and answer["responseMessage"] == "m"
        # an untrusted certificate is refused, with the peer named
        monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")
        near.client.close()  # no pooled connection to reuse
        response = yield Agent(reactor).request(
            b"POST",
            f"http://127.0.0.1:{near_port}/v1/chat/completions".encode(),
            None,
            _bytes_producer(body),
        )
        text = (yield readBody(response)).decode()
        assert response.code == 502 and "peer far" in text
    finally:
        yield near.stopService()
        yield far.stopService()


def _bytes_producer(body: bytes):
    import io

    from twisted.web.client import FileBodyProducer

    return FileBodyProducer(io.BytesIO(body))
