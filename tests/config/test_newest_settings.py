"""
The settings the newest llama-swap added: globalTTL, unloadTimeout,
timeouts, env macros, filters, capabilities, routing (groups, matrix, fifo
priority), profiles, selectors, peers and upstream paths -- each with the
one-line error a wrong value gets.
"""

import textwrap

import pytest

from llamaswap.config import ConfigError, load_config, parse_config

TWO_MODELS = """
models:
  a:
    cmd: serve-a --port ${PORT}
  b:
    cmd: serve-b --port ${PORT}
"""


def parse(text: str, environ=None):
    return parse_config(textwrap.dedent(text), environ=environ or {})


def error_of(text: str, environ=None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, environ)
    return str(info.value)


# ---------------------------------------------------------------- defaults and timeouts


def test_global_ttl_applies_to_models_without_their_own():
    config = parse(
        """
        globalTTL: 300
        models:
          absent: {cmd: "s --port ${PORT}"}
          minus-one: {cmd: "s --port ${PORT}", ttl: -1}
          never: {cmd: "s --port ${PORT}", ttl: 0}
          own: {cmd: "s --port ${PORT}", ttl: 30}
        """
    )
    ttls = {model_id: model.ttl for model_id, model in config.models.items()}
    assert ttls == {"absent": 300, "minus-one": 300, "never": 0, "own": 30}


def test_negative_global_ttl_is_an_error():
    assert "globalTTL must be 0 (never unload) or a number of seconds, got -5" in error_of(
        "globalTTL: -5\n" + TWO_MODELS
    )


def test_unload_timeout_global_per_model_and_the_older_name():
    config = parse(
        """
        unloadTimeout: 20
        models:
          default: {cmd: "s --port ${PORT}"}
          zero: {cmd: "s --port ${PORT}", unloadTimeout: 0}
          own: {cmd: "s --port ${PORT}", unloadTimeout: 3}
          older: {cmd: "s --port ${PORT}", stopTimeout: 7}
        """
    )
    timeouts = {model_id: model.unload_timeout for model_id, model in config.models.items()}
    assert timeouts == {"default": 20, "zero": 20, "own": 3, "older": 7}
    assert config.models["older"].stop_timeout == 7
    assert parse(TWO_MODELS).unload_timeout == 10


def test_negative_unload_timeout_is_an_error():
    assert "unloadTimeout must be 0 (use the default) or a number of seconds, got -1" in error_of(
        "unloadTimeout: -1\n" + TWO_MODELS
    )


def test_timeouts_defaults_and_overrides():
    config = parse(
        """
        models:
          a:
            cmd: s --port ${PORT}
            timeouts: {connect: 5, responseHeader: 12, idleConn: 1, keepalive: 0, tlsHandshake: 3}
          b:
            cmd: s --port ${PORT}
        peers:
          p:
            proxy: http://127.0.0.1:9
            models: [x]
            timeouts: {connect: 2}
        """
    )
    a = config.models["a"].timeouts
    assert (a.connect, a.response_header, a.idle_conn, a.keepalive, a.tls_handshake) == (5, 12, 1, 0, 3)
    b = config.models["b"].timeouts
    assert (b.connect, b.response_header, b.idle_conn, b.keepalive, b.tls_handshake) == (30, 0, 90, 30, 10)
    peer = config.peers["p"].timeouts
    assert (peer.connect, peer.response_header) == (2, 60)  # peers wait a minute for headers by default


def test_negative_timeout_is_an_error():
    message = error_of(
        """
        models:
          a:
            cmd: s --port ${PORT}
            timeouts: {responseHeader: -2}
        """
    )
    assert "model 'a' timeouts: responseHeader must be 0 (no limit) or a number of seconds, got -2" in message


# ---------------------------------------------------------------- env macros


def test_env_macros_everywhere_macros_work_and_in_flow_lists():
    config = parse(
        """
        apiKeys: [${env.KEY}]
        macros:
          flags: --threads ${env.THREADS}
        models:
          a:
            cmd: s --port ${PORT} ${flags}
            env: ["HOME=${env.HOME_DIR}"]
        """,
        environ={"KEY": "sk-secret", "THREADS": "8", "HOME_DIR": "/srv"},
    )
    assert config.api_keys == ("sk-secret",)
    assert config.models["a"].cmd.endswith("--threads 8")
    assert config.models["a"].env == ("HOME=/srv",)


def test_unset_env_variable_names_the_variable_setting_and_line():
    message = error_of(
        """
        models:
          a:
            cmd: s --port ${PORT} --key ${env.NOT_SET_ANYWHERE}
        """
    )
    assert message.startswith("line 4 (models.a.cmd): environment variable 'NOT_SET_ANYWHERE' is not set")
    assert "export it before starting llamaswap" in message


def test_env_value_cannot_break_the_yaml():
    message = error_of("models:\n  a:\n    cmd: s ${env.TWO_LINES}\n", environ={"TWO_LINES": "a\nb"})
    assert "environment variable 'TWO_LINES' contains a line break" in message


# ---------------------------------------------------------------- filters and capabilities


def test_set_params_any_json_value_and_by_id_aliases():
    config = parse(
        """
        models:
          a:
            cmd: s --port ${PORT}
            filters:
              stripParams: "temperature, top_p"
              setParams:
                max_tokens: 512
                stop: ["</s>"]
                chat_template_kwargs: {enable_thinking: false}
              setParamsByID:
                "a:thinking":
                  chat_template_kwargs: {enable_thinking: true}
        """
    )
    filters = config.models["a"].filters
    assert filters.strip_params == ("temperature", "top_p")
    assert dict(filters.params_for("a")) == {
        "max_tokens": 512,
        "stop": ["</s>"],
        "chat_template_kwargs": {"enable_thinking": False},
    }
    assert dict(filters.params_for("a:thinking"))["chat_template_kwargs"] == {"enable_thinking": True}
    assert config.real_model_name("a:thinking") == "a"


def test_set_params_cannot_change_the_model():
    config = parse(
        """
        models:
          a:
            cmd: s --port ${PORT}
            filters:
              setParams: {model: other, seed: 1}
        """
    )
    assert dict(config.models["a"].filters.params_for("a")) == {"seed": 1}
    assert any("model" in warning and "setParams" in warning for warning in config.warnings)


def test_set_params_by_id_key_clashing_with_a_model_is_an_error():
    message = error_of(
        """
        models:
          a:
            cmd: s --port ${PORT}
            filters:
              setParamsByID:
                b: {seed: 1}
          b:
            cmd: s --port ${PORT}
        """
    )
    assert "'b'" in message


@pytest.mark.parametrize(
    "capabilities, expected",
    [
        ("{in: [smell]}", "capabilities.in: invalid modality 'smell', must be one of: text, audio, image"),
        ("{context: -3}", "capabilities.context"),
        ("{tools: maybe}", "capabilities: tools must be true or false, got the text 'maybe'"),
    ],
)
def test_capabilities_are_validated(capabilities, expected):
    message = error_of(f"models:\n  a:\n    cmd: s --port ${{PORT}}\n    capabilities: {capabilities}\n")
    assert expected in message


# ---------------------------------------------------------------- routing


def test_router_settings_groups_are_the_same_as_top_level_groups():
    nested = parse(
        TWO_MODELS
        + textwrap.dedent(
            """
        routing:
          router:
            use: group
            settings:
              groups:
                pair: {swap: false, members: [a, b]}
            """
        )
    )
    top = parse(TWO_MODELS + "groups:\n  pair: {swap: false, members: [a, b]}\n")
    assert nested.groups == top.groups
    assert nested.router == top.router == "group"


def test_matrix_router_settings():
    config = parse(
        TWO_MODELS
        + textwrap.dedent(
            """
        routing:
          router:
            use: matrix
            settings:
              matrix:
                vars: {A: a}
                evict_costs: {b: 5}
                sets:
                  both: A & b
            """
        )
    )
    assert config.router == "matrix"
    assert dict(config.matrix.variables) == {"A": "a"}
    assert dict(config.matrix.evict_costs)["b"] == 5
    assert config.matrix.program.can_run_together(["a", "b"])


@pytest.mark.parametrize(
    "routing, expected",
    [
        ("router: {use: bogus}", "routing.router.use: unknown router 'bogus' (valid: group, matrix)"),
        (
            "router: {use: matrix, settings: {matrix: {sets: {s1: 'a & zz'}}}}",
            "routing.router.settings.matrix: set 's1': 'zz' is neither a var nor a model id",
        ),
        (
            "router: {use: matrix, settings: {matrix: {sets: {s1: 'a & (b'}}}}",
            "set 's1' ('a & (b'): missing ')' for the '(' at position 4",
        ),
        (
            "router: {use: matrix, settings: {matrix: {sets: {s1: '+s2', s2: '+s1'}}}}",
            "s1",
        ),
        ("scheduler: {use: lifo}", "routing.scheduler.use: unknown scheduler 'lifo' (valid: swap-aware, fifo)"),
        (
            "scheduler: {use: fifo, settings: {fifo: {priority: {zz: 3}}}}",
            "routing.scheduler.settings.fifo.priority: 'zz' is not a model id or alias",
        ),
    ],
)
def test_routing_errors(routing, expected):
    assert expected in error_of(TWO_MODELS + "routing:\n  " + routing + "\n")


def test_priority_accepts_aliases():
    config = parse(
        """
        models:
          a: {cmd: "s --port ${PORT}", aliases: [first]}
          b: {cmd: "s --port ${PORT}"}
        routing:
          scheduler:
            use: fifo
            settings: {fifo: {priority: {first: 10, b: -1}}}
        """
    )
    assert dict(config.priority) == {"a": 10, "b": -1}


# ---------------------------------------------------------------- profiles, selectors, peers


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("profiles:\n  p:\n    pins:\n      x: zz\n", "profiles.p.pins.x: 'zz' is not a model, alias, peer model or selector"),
        (
            "selectors:\n  s1: {strategy: warm, targets: [s2]}\n  s2: {strategy: warm, targets: [a]}\n",
            "selectors.s1.targets[0] is the selector 's2': a selector cannot choose another selector",
        ),
        (
            "selectors:\n  s1: {strategy: hot, targets: [a]}\n",
            "selectors.s1.strategy: unknown strategy 'hot' (valid: warm, pin, spillover)",
        ),
        ("selectors:\n  a: {strategy: warm, targets: [b]}\n", "selectors.a: the name is already a model id"),
        ("selectors:\n  s1: {strategy: warm, targets: []}\n", "selectors.s1.targets"),
        ("selectors:\n  s1: {strategy: warm, targets: [zz]}\n", "zz"),
        (
            "selectors:\n  s1: {strategy: spillover, targets: [a, b], settings: {spillover: 0}}\n",
            "spillover",
        ),
        ("peers:\n  p1:\n    models: [x]\n", "peer 'p1': proxy is required"),
        (
            "peers:\n  p1:\n    proxy: notaurl\n    models: [x]\n",
            "peer 'p1': invalid proxy URL 'notaurl': expected http://host:port or https://host:port",
        ),
        ("upstream:\n  ignorePaths: ['([a-']\n", "upstream.ignorePaths: invalid regular expression '([a-'"),
        ("apiKeys: ['']\n", "apiKeys[0] is empty"),
    ],
)
def test_profile_selector_peer_and_upstream_errors(extra, expected):
    assert expected in error_of(TWO_MODELS + extra)


def test_peers_alone_are_a_valid_configuration():
    config = parse(
        """
        peers:
          big-box:
            proxy: https://10.0.0.2:8443
            apiKey: ${env.BOX_KEY}
            models: [llama-70b, qwen-32b]
        """,
        environ={"BOX_KEY": "sk-box"},
    )
    assert config.models == {}
    peer = config.peers["big-box"]
    assert (peer.proxy, peer.api_key, peer.models) == ("https://10.0.0.2:8443", "sk-box", ("llama-70b", "qwen-32b"))


def test_ignore_paths_and_websockets_settings():
    config = parse(
        """
        upstream:
          ignorePaths: ['^/ws$', '^/view']
        models:
          comfy:
            cmd: s --port ${PORT}
            compat:
              ignoreWebsockets: true
        """
    )
    assert config.upstream_ignore_paths == ("^/ws$", "^/view")
    assert config.models["comfy"].ignore_websockets is True


# ---------------------------------------------------------------- several files


def write(folder, name: str, text: str) -> str:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_config_dir_files_merge_in_name_order_after_the_main_file(tmp_path):
    main = write(tmp_path, "config.yaml", "logLevel: debug\nmodels:\n  a: {cmd: 's --port ${PORT}'}\n")
    directory = tmp_path / "conf.d"
    directory.mkdir()
    write(directory, "20-more.yml", "models:\n  c: {cmd: 's --port ${PORT}'}\n")
    write(directory, "10-b.yaml", "models:\n  b: {cmd: 's --port ${PORT}'}\ngroups:\n  g: {members: [b]}\n")
    write(directory, "notes.txt", "models: [this is not configuration]")
    config = load_config(main, config_dir=str(directory))
    assert sorted(config.models) == ["a", "b", "c"]
    assert config.log_level == "debug"
    assert config.models["a"].port == 5800 and config.models["c"].port == 5802


def test_the_same_model_in_two_files_names_both(tmp_path):
    main = write(tmp_path, "config.yaml", TWO_MODELS)
    directory = tmp_path / "conf.d"
    directory.mkdir()
    other = write(directory, "more.yaml", "models:\n  a: {cmd: other}\n")
    with pytest.raises(ConfigError) as info:
        load_config(main, config_dir=str(directory))
    assert str(info.value) == f"model 'a' is defined in both {main} and {other}: keep one of them"


@pytest.mark.parametrize("kind", ["groups", "peers", "profiles", "selectors"])
def test_other_duplicate_ids_across_files(tmp_path, kind):
    bodies = {
        "groups": "groups:\n  g: {members: [a]}\n",
        "peers": "peers:\n  g: {proxy: 'http://127.0.0.1:9', models: [x]}\n",
        "profiles": "profiles:\n  g: {pins: {x: a}}\n",
        "selectors": "selectors:\n  g: {strategy: warm, targets: [a]}\n",
    }
    first = write(tmp_path, "1.yaml", TWO_MODELS + bodies[kind])
    second = write(tmp_path, "2.yaml", bodies[kind])
    with pytest.raises(ConfigError) as info:
        load_config(None, config_dir=str(tmp_path))
    message = str(info.value)
    assert "'g' is defined in both" in message and first in message and second in message


def test_errors_name_the_file_that_holds_the_setting(tmp_path):
    write(tmp_path, "1.yaml", TWO_MODELS)
    second = write(tmp_path, "2.yaml", "peers:\n  p:\n    models: [q]\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, config_dir=str(tmp_path))
    assert str(info.value).startswith(f"{second}: peer 'p': proxy is required")


def test_unset_env_in_a_directory_file_names_it(tmp_path):
    write(tmp_path, "1.yaml", TWO_MODELS)
    second = write(tmp_path, "2.yaml", "models:\n  c:\n    cmd: z ${env.UNSET_FOR_TEST}\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, config_dir=str(tmp_path), environ={})
    assert str(info.value).startswith(f"{second}: line 3 (models.c.cmd): environment variable 'UNSET_FOR_TEST'")


def test_the_main_file_inside_the_directory_is_refused(tmp_path):
    main = write(tmp_path, "config.yaml", TWO_MODELS)
    with pytest.raises(ConfigError) as info:
        load_config(main, config_dir=str(tmp_path))
    assert "is also in --config-dir" in str(info.value)


def test_a_directory_of_empty_files_is_not_a_configuration(tmp_path):
    write(tmp_path, "empty.yaml", "# nothing yet\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, config_dir=str(tmp_path))
    assert "no models" in str(info.value) or "models" in str(info.value)


def test_lists_concatenate_and_conflicting_scalars_are_errors(tmp_path):
    write(tmp_path, "1.yaml", TWO_MODELS + "apiKeys: [one]\nlogLevel: info\n")
    write(tmp_path, "2.yaml", "apiKeys: [two]\n")
    assert load_config(None, config_dir=str(tmp_path)).api_keys == ("one", "two")
    write(tmp_path, "3.yaml", "logLevel: debug\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, config_dir=str(tmp_path))
    assert "logLevel" in str(info.value)
