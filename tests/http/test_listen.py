"""
The command line: --listen forms, TLS flag rules and the options object.
"""

from __future__ import annotations

import pytest
from twisted.python import usage

from llamaswap.http.listen import ListenError, display_url, endpoint_description


@pytest.mark.parametrize(
    "listen, expected",
    [
        (None, "tcp:8080:interface=127.0.0.1"),
        ("127.0.0.1:9000", "tcp:9000:interface=127.0.0.1"),
        ("localhost:9000", "tcp:9000:interface=localhost"),
        (":9000", "tcp:9000"),
        ("0.0.0.0:80", "tcp:80:interface=0.0.0.0"),
        ("[::1]:9000", "tcp6:9000:interface=\\:\\:1"),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"),
        ("tcp:8080", "tcp:8080"),
        ("unix:/tmp/llamaswap.sock", "unix:/tmp/llamaswap.sock"),
    ],
)
def test_listen_forms(listen, expected):
    assert endpoint_description(listen) == expected


def test_tls_defaults_to_8443():
    assert endpoint_description(None, "c.pem", "k.pem") == (
        "ssl:8443:interface=127.0.0.1:certKey=c.pem:privateKey=k.pem"
    )
    assert endpoint_description(":443", "/a:b/c.pem", "k.pem") == "ssl:443:certKey=/a\\:b/c.pem:privateKey=k.pem"
    assert endpoint_description("tcp:9443:interface=::", "c.pem", "k.pem").startswith("ssl:9443:interface=::")


def test_tls_needs_both_files():
    with pytest.raises(ListenError, match="Both --tls-cert-file and --tls-key-file"):
        endpoint_description(None, "c.pem", None)
    with pytest.raises(ListenError):
        endpoint_description(None, None, "k.pem")


def test_tls_with_a_unix_socket_is_refused():
    with pytest.raises(ListenError):
        endpoint_description("unix:/tmp/x.sock", "c.pem", "k.pem")


def test_tls_without_the_tls_extra_says_how_to_get_it(monkeypatch):
    from llamaswap.http import listen

    monkeypatch.setattr(listen, "tls_available", lambda: False)
    with pytest.raises(ListenError, match=r"pip install 'llamaswap\[tls\]'"):
        endpoint_description(None, "c.pem", "k.pem")
    with pytest.raises(ListenError, match="HTTPS needs TLS support"):
        endpoint_description("ssl:8443:certKey=c.pem")
    assert endpoint_description(":8080") == "tcp:8080"


def test_bad_port():
    with pytest.raises(ListenError):
        endpoint_description("127.0.0.1:99999")


def test_display_url():
    assert display_url("tcp:8080:interface=127.0.0.1") == "http://127.0.0.1:8080"
    assert display_url("tcp:8080") == "http://0.0.0.0:8080"
    assert display_url("ssl:8443:interface=\\:\\:1:certKey=a") == "https://[::1]:8443"
    assert display_url("unix:/tmp/s") == "unix:/tmp/s"


def plugin_options():
    from twisted.plugins.llamaswap_plugin import Options

    return Options()


def test_options_config_alias_and_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = plugin_options()
    options.parseOptions(["-c", "my.yaml", "--listen", ":1234", "--watch-config"])
    assert options["config"] == "my.yaml"
    assert options["endpoint"] == "tcp:1234"
    assert options["watch-config"]
    options = plugin_options()
    options.parseOptions(["--config", "other.yaml"])
    assert options["config"] == "other.yaml"
    assert options["endpoint"] == "tcp:8080:interface=127.0.0.1"


def test_options_default_config_from_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = plugin_options()
    options.parseOptions([])
    assert options["config"] is None  # the demo
    (tmp_path / "config.yaml").write_text("models: {}\n")
    options = plugin_options()
    options.parseOptions([])
    assert options["config"] == "config.yaml"


def test_options_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k.pem").write_text("key")
    with pytest.raises(usage.UsageError, match="Both --tls-cert-file"):
        plugin_options().parseOptions(["--tls-key-file", "k.pem"])
    with pytest.raises(usage.UsageError, match="--tls-cert-file missing.pem: cannot read the file"):
        plugin_options().parseOptions(["--tls-cert-file", "missing.pem", "--tls-key-file", "k.pem"])
    with pytest.raises(usage.UsageError, match="--watch-config needs"):
        plugin_options().parseOptions(["--watch-config"])
