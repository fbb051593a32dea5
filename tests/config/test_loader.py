"""
The configuration language: defaults, macros, groups, hooks and every error.
"""

import textwrap

import pytest

from llamaswap.config import ConfigError, changed_models, load_config, parse_config
from llamaswap.config.command import split_command, strip_comments
from llamaswap.config.records import DEFAULT_GROUP_ID


def parse(text: str):
    return parse_config(textwrap.dedent(text))


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


# ---------------------------------------------------------------- defaults


def test_defaults():
    config = parse(
        """
        models:
          model1:
            cmd: path/to/cmd --port ${PORT}
        """
    )
    assert config.health_check_timeout == 120
    assert config.start_port == 5800
    assert config.log_level == "info"
    assert config.log_time_format == ""
    assert config.metrics_max_in_memory == 1000
    assert config.send_loading_state is False
    assert config.include_aliases_in_list is False
    assert config.preload == ()
    model = config.models["model1"]
    assert model.cmd == "path/to/cmd --port 5800"
    assert model.argv == ("path/to/cmd", "--port", "5800")
    assert model.cmd_stop == ""
    assert model.proxy == "http://localhost:5800"
    assert model.check_endpoint == "/health"
    assert model.health_url == "http://localhost:5800/health"
    assert model.aliases == ()
    assert model.env == ()
    assert model.ttl == 0
    assert model.unlisted is False
    assert model.use_model_name == ""
    assert model.concurrency_limit == 0
    assert model.max_concurrency == 10
    assert model.strip_params == ()
    assert model.stop_timeout == model.unload_timeout == 10  # the newest llama-swap's default
    group = config.groups[DEFAULT_GROUP_ID]
    assert (group.swap, group.exclusive, group.persistent) == (True, True, False)
    assert group.members == ("model1",)


def test_full_model_entry():
    config = parse(
        """
        healthCheckTimeout: 30
        logLevel: DEBUG
        logTimeFormat: rfc3339
        metricsMaxInMemory: 5
        sendLoadingState: true
        includeAliasesInList: true
        stopTimeout: 2.5
        models:
          model1:
            cmd: path/to/cmd --arg1 one
            cmdStop: kill -TERM ${PID}
            proxy: "http://localhost:8080"
            name: "Model 1"
            description: "This is model 1"
            aliases: ["m1", "model-one"]
            env: ["VAR1=value1", "VAR2=with=equals"]
            checkEndpoint: none
            ttl: 60
            unlisted: true
            useModelName: "upstream:name"
            concurrencyLimit: 3
            sendLoadingState: false
            stopTimeout: 1
        """
    )
    assert config.health_check_timeout == 30
    assert config.log_level == "debug"
    assert config.log_time_format == "rfc3339"
    assert config.metrics_max_in_memory == 5
    assert config.include_aliases_in_list is True
    model = config.models["model1"]
    assert model.proxy == "http://localhost:8080"
    assert model.name == "Model 1"
    assert model.description == "This is model 1"
    assert model.aliases == ("m1", "model-one")
    assert model.environment({"PATH": "/bin"}) == {
        "PATH": "/bin",
        "VAR1": "value1",
        "VAR2": "with=equals",
    }
    assert model.health_url is None
    assert model.ttl == 60
    assert model.unlisted is True
    assert model.use_model_name == "upstream:name"
    assert model.max_concurrency == 3
    assert model.send_loading_state is False
    assert model.stop_timeout == 1.0
    assert model.stop_argv(1234) == ["kill", "-TERM", "1234"]
    assert config.real_model_name("m1") == "model1"
    assert config.real_model_name("model1") == "model1"
    assert config.real_model_name("nope") is None
    assert config.models[config.real_model_name("model-one")] is model


def test_health_check_timeout_has_a_minimum():
    config = parse(
        """
        healthCheckTimeout: 5
        models:
          m: {cmd: "srv --port ${PORT}"}
        """
    )
    assert config.health_check_timeout == 15
    assert any("healthCheckTimeout" in warning for warning in config.warnings)


def test_send_loading_state_model_overrides_global():
    config = parse(
        """
        sendLoadingState: true
        models:
          model1:
            cmd: path/to/cmd --port ${PORT}
            sendLoadingState: false
          model2:
            cmd: path/to/cmd --port ${PORT}
        """
    )
    assert config.models["model1"].send_loading_state is False
    assert config.models["model2"].send_loading_state is True


def test_deprecations_and_unknown_settings_warn():
    config = parse(
        """
        logRequests: true
        models:
          m:
            cmd: srv --port ${PORT}
            tll: 5
        """
    )
    text = "\n".join(config.warnings)
    assert "logRequests is deprecated" in text
    assert "unknown setting 'tll'" in text
    assert "did you mean 'ttl'" in text


def test_unknown_log_level_and_time_format_fall_back():
    config = parse(
        """
        logLevel: loud
        logTimeFormat: iso
        models:
          m: {cmd: "srv --port ${PORT}"}
        """
    )
    assert config.log_level == "info"
    assert config.log_time_format == ""
    assert len(config.warnings) == 2


# ---------------------------------------------------------------- ports


def test_automatic_port_assignment_in_sorted_order():
    config = parse(
        """
        startPort: 5800
        models:
          model2:
            cmd: svr --port ${PORT}
            proxy: "http://172.11.22.33:${PORT}"
          model3:
            cmd: svr --port 1999
            proxy: "http://1.2.3.4:1999"
          model1:
            cmd: svr --port ${PORT}
        """
    )
    assert config.models["model1"].cmd == "svr --port 5800"
    assert config.models["model1"].proxy == "http://localhost:5800"
    assert config.models["model2"].cmd == "svr --port 5801"
    assert config.models["model2"].proxy == "http://172.11.22.33:5801"
    assert config.models["model3"].cmd == "svr --port 1999"


def test_ports_are_sticky_across_reloads():
    first = parse(
        """
        models:
          keep: {cmd: "svr --port ${PORT}"}
          change: {cmd: "svr --port ${PORT}"}
          remove: {cmd: "svr --port ${PORT}"}
          rename-me: {cmd: "svr --port ${PORT}"}
          fixed: {cmd: "svr --port 1999", proxy: "http://127.0.0.1:1999"}
        """
    )
    ports = {model_id: model.port for model_id, model in first.models.items()}
    assert ports == {"change": 5800, "fixed": None, "keep": 5801, "remove": 5802, "rename-me": 5803}
    second = parse_config(
        textwrap.dedent(
            """
            models:
              aaa-added: {cmd: "svr --port ${PORT}"}
              keep: {cmd: "svr --port ${PORT}"}
              change: {cmd: "svr --port ${PORT} --more"}
              renamed: {cmd: "svr --port ${PORT}"}
              fixed: {cmd: "svr --port 1999", proxy: "http://127.0.0.1:1999"}
            """
        ),
        previous=first,
    )
    ports = {model_id: model.port for model_id, model in second.models.items()}
    # kept models keep their ports; new ones take the lowest free ones
    # (here those the removed and renamed models left behind)
    assert ports == {"aaa-added": 5802, "change": 5800, "fixed": None, "keep": 5801, "renamed": 5803}
    assert second.models["keep"] == first.models["keep"]
    assert changed_models(first, second) == ({"aaa-added", "renamed"}, {"remove", "rename-me"}, {"change"})
    # a new startPort starts over
    third = parse_config("startPort: 7000\nmodels:\n  keep: {cmd: 'svr ${PORT}'}\n", previous=second)
    assert third.models["keep"].port == 7000


def test_user_start_port():
    config = parse(
        """
        startPort: 1000
        models:
          m: {cmd: "svr --port ${PORT}"}
        """
    )
    assert config.start_port == 1000
    assert config.models["m"].proxy == "http://localhost:1000"


@pytest.mark.parametrize("value", ["abcd", "-99", "0"])
def test_invalid_start_port(value):
    message = error_of(
        f"""
        startPort: {value}
        models:
          m: {{cmd: "svr --port ${{PORT}}"}}
        """
    )
    assert "startPort" in message


def test_proxy_port_without_cmd_port_is_an_error():
    message = error_of(
        """
        models:
          model1:
            cmd: svr --port 111
        """
    )
    assert message == (
        "model model1: proxy uses ${PORT} but cmd does not - ${PORT} is only available when used in cmd"
    )


# ---------------------------------------------------------------- macros


def test_macro_replacement_with_comments_and_model_override():
    config = parse(
        """
        startPort: 9990
        macros:
          svr-path: "path/to/server"
          argOne: "--arg1"
          argTwo: "--arg2"
          autoPort: "--port ${PORT}"
          overriddenByModelMacro: failed
        models:
          model1:
            macros:
              overriddenByModelMacro: success
            cmd: |
              ${svr-path} ${argTwo}
              # the automatic ${PORT} is replaced
              ${autoPort}
              ${argOne}
              --arg3 three
              --overridden ${overriddenByModelMacro}
            cmdStop: |
              /path/to/stop.sh --port ${PORT} ${argTwo}
        """
    )
    model = config.models["model1"]
    assert " ".join(model.argv) == (
        "path/to/server --arg2 --port 9990 --arg1 --arg3 three --overridden success"
    )
    assert model.stop_argv(1) == ["/path/to/stop.sh", "--port", "9990", "--arg2"]


def test_macro_in_comment_is_stripped_before_expansion():
    config = parse(
        """
        startPort: 9990
        macros:
          "latest-llama": >
            /user/llama.cpp/build/bin/llama-server
            --port ${PORT}
        models:
          "test-model":
            cmd: |
              # ${latest-llama} is a macro that is defined above
              ${latest-llama}
              --model /path/to/model.gguf
              -ngl 99
        """
    )
    assert " ".join(config.models["test-model"].argv) == (
        "/user/llama.cpp/build/bin/llama-server --port 9990 --model /path/to/model.gguf -ngl 99"
    )


def test_model_id_macro():
    config = parse(
        """
        startPort: 9000
        macros:
          "docker-llama": docker run --name ${MODEL_ID} -p ${PORT}:8080 docker_img
          "docker-stop": docker stop ${MODEL_ID}
        models:
          model1:
            cmd: /path/to/server -p ${PORT} -hf ${MODEL_ID}
          model2:
            cmd: ${docker-llama}
            cmdStop: ${docker-stop}
          author/model:F16:
            cmd: /path/to/server -p ${PORT} -hf ${MODEL_ID}
            cmdStop: stop
        """
    )
    assert config.macros[1] == ("docker-stop", "docker stop ${MODEL_ID}")
    assert " ".join(config.models["model1"].argv) == "/path/to/server -p 9001 -hf model1"
    assert " ".join(config.models["model2"].argv) == "docker run --name model2 -p 9002:8080 docker_img"
    assert config.models["model2"].stop_argv(5) == ["docker", "stop", "model2"]
    assert " ".join(config.models["author/model:F16"].argv) == (
        "/path/to/server -p 9000 -hf author/model:F16"
    )


def test_macro_in_macro_uses_earlier_definitions():
    config = parse(
        """
        macros:
          "base": "/models"
          "path": "${base}/llama"
          "full": "${path}/model.gguf"
          "podman": "podman run --name ${MODEL_ID}"
        models:
          test:
            cmd: ${podman} load ${full}
            proxy: http://localhost:8080
        """
    )
    assert config.models["test"].cmd == "podman run --name test load /models/llama/model.gguf"


def test_model_macro_overrides_global_used_inside_another_macro():
    config = parse(
        """
        macros:
          "tag": "global"
          "msg": "value-${tag}"
        models:
          test:
            macros:
              "tag": "model-level"
            cmd: echo ${msg}
            proxy: http://localhost:8080
        """
    )
    assert config.models["test"].cmd == "echo value-model-level"


def test_macro_referring_to_a_later_macro_is_unknown():
    message = error_of(
        """
        macros:
          "A": "value-${B}"
          "B": "b"
        models:
          test:
            cmd: echo ${A}
            proxy: http://localhost:8080
        """
    )
    assert "unknown macro '${B}' found in test.cmd" in message


def test_macro_self_reference():
    message = error_of(
        """
        macros:
          "recursive": "value-${recursive}"
        models:
          test:
            cmd: echo ${recursive}
            proxy: http://localhost:8080
        """
    )
    assert message == "macro 'recursive' contains self-reference"


def test_undefined_macro_inside_macro():
    message = error_of(
        """
        macros:
          "A": "value-${UNDEFINED}"
        models:
          test:
            cmd: echo ${A}
            proxy: http://localhost:8080
        """
    )
    assert "unknown macro '${UNDEFINED}' found in test.cmd" in message


@pytest.mark.parametrize(
    "section, expected",
    [
        ("macros:\n  PORT: '1111'\n", "macro name 'PORT' is reserved"),
        ("macros:\n  MODEL_ID: model1\n", "macro name 'MODEL_ID' is reserved"),
        (
            "models:\n  model1:\n    cmd: srv ${PORT}\n    macros:\n      PORT: 1111\n",
            "model model1: macro name 'PORT' is reserved",
        ),
        (
            "models:\n  model1:\n    cmd: srv ${PORT}\n    macros:\n      MODEL_ID: m\n",
            "model model1: macro name 'MODEL_ID' is reserved",
        ),
    ],
)
def test_reserved_macro_names(section, expected):
    text = section
    if "models:" not in section:
        text += "models:\n  m:\n    cmd: srv ${PORT}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    "name, message",
    [
        ("a" * 64, "exceeds maximum length of 63 characters"),
        ("bad name", "contains invalid characters"),
        ("dollar$", "contains invalid characters"),
    ],
)
def test_macro_name_rules(name, message):
    text = f"macros:\n  '{name}': x\nmodels:\n  m:\n    cmd: srv ${{PORT}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert message in str(info.value)
    assert name in str(info.value)


def test_macro_name_of_63_characters_is_fine():
    name = "a" * 63
    config = parse_config(f"macros:\n  '{name}': x\nmodels:\n  m:\n    cmd: srv ${{PORT}} ${{{name}}}\n")
    assert config.models["m"].argv[-1] == "x"


def test_macro_value_length_limit():
    long = "x" * 1024
    with pytest.raises(ConfigError) as info:
        parse_config(f"macros:\n  big: {long}\nmodels:\n  m:\n    cmd: srv ${{PORT}}\n")
    assert "macro value for 'big' exceeds maximum length of 1024 characters" in str(info.value)


@pytest.mark.parametrize(
    "value, valid",
    [('"test"', True), ("42", True), ("3.14", True), ("true", True), ("[1, 2, 3]", False), ("{key: value}", False)],
)
def test_macro_value_types(value, valid):
    text = f"macros:\n  VALUE: {value}\nmodels:\n  m:\n    cmd: srv ${{PORT}}\n"
    if valid:
        parse_config(text)
    else:
        with pytest.raises(ConfigError) as info:
            parse_config(text)
        assert "VALUE" in str(info.value)
        assert "must be a scalar type" in str(info.value)


def test_scalar_macros_are_written_like_the_original():
    config = parse(
        """
        macros:
          flag: true
          off: false
          word: on
          temp: 0.7
          whole: 3.0
          big: 1000000.0
          count: 16384
        models:
          m:
            cmd: srv ${PORT} ${flag} ${off} ${word} ${temp} ${whole} ${big} ${count}
        """
    )
    assert config.models["m"].argv[2:] == ("true", "false", "on", "0.7", "3", "1e+06", "16384")


@pytest.mark.parametrize("field", ["cmd", "cmdStop", "proxy", "checkEndpoint", "filters.stripParams"])
def test_unknown_macro_names_model_and_field(field):
    settings = {
        "cmd": 'cmd: "${svr-path} --port ${PORT} ${unknownMacro}"',
        "cmdStop": 'cmd: "${svr-path} --port ${PORT}"\n    cmdStop: "kill ${unknownMacro}"',
        "proxy": 'cmd: "${svr-path} --port ${PORT}"\n    proxy: "http://${unknownMacro}:${PORT}"',
        "checkEndpoint": 'cmd: "${svr-path} --port ${PORT}"\n    checkEndpoint: "/h/${unknownMacro}"',
        "filters.stripParams": 'cmd: "${svr-path} --port ${PORT}"\n    filters:\n      stripParams: "model,${unknownMacro}"',
    }[field]
    text = f"macros:\n  svr-path: path/to/server\nmodels:\n  model1:\n    {settings}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert f"unknown macro '${{unknownMacro}}' found in model1.{field}" in str(info.value)


def test_unknown_macro_suggests_the_close_name():
    message = error_of(
        """
        macros:
          ctx: 4096
        models:
          qwen:
            cmd: srv --port ${PORT} -c ${ctxx}
        """
    )
    assert message == "unknown macro '${ctxx}' found in qwen.cmd (did you mean '${ctx}'?)"


def test_pid_is_allowed_only_in_cmd_stop():
    parse(
        """
        models:
          m:
            cmd: srv --port ${PORT}
            cmdStop: kill ${PID}
        """
    )
    assert "unknown macro '${PID}' found in m.cmd" in error_of(
        """
        models:
          m:
            cmd: srv --port ${PORT} ${PID}
        """
    )


# ---------------------------------------------------------------- metadata


def test_typed_macros_in_metadata():
    config = parse(
        """
        startPort: 10000
        macros:
          PORT_NUM: 10001
          TEMP: 0.7
          ENABLED: true
          NAME: "llama model"
          CTX: 16384
        models:
          test-model:
            cmd: /path/to/server -p ${PORT}
            metadata:
              port: ${PORT_NUM}
              temperature: ${TEMP}
              enabled: ${ENABLED}
              model_name: ${NAME}
              context: ${CTX}
              note: "Running on port ${PORT_NUM} with temp ${TEMP} and context ${CTX}"
        """
    )
    assert config.models["test-model"].metadata == {
        "port": 10001,
        "temperature": 0.7,
        "enabled": True,
        "model_name": "llama model",
        "context": 16384,
        "note": "Running on port 10001 with temp 0.7 and context 16384",
    }


def test_nested_metadata_with_port_and_model_id():
    config = parse(
        """
        startPort: 10000
        macros:
          TEMP: 0.7
        models:
          test-model:
            cmd: /path/to/server -p ${PORT}
            macros:
              TEMP: 0.9
            metadata:
              config:
                port: ${PORT}
                temperature: ${TEMP}
              tags: ["model:${MODEL_ID}", "port:${PORT}"]
              nested:
                deep:
                  value: ${TEMP}
        """
    )
    assert config.models["test-model"].metadata == {
        "config": {"port": 10000, "temperature": 0.9},
        "tags": ["model:test-model", "port:10000"],
        "nested": {"deep": {"value": 0.9}},
    }


def test_unknown_macro_in_metadata():
    message = error_of(
        """
        models:
          test-model:
            cmd: /path/to/server -p ${PORT}
            metadata:
              value: ${UNKNOWN_MACRO}
        """
    )
    assert message == "model test-model metadata: unknown macro '${UNKNOWN_MACRO}'"


# ---------------------------------------------------------------- commands


def test_split_command_posix_rules():
    args = split_command(
        """python model1.py \\
        -a "double quotes" \\
        --arg2 'single quotes'
        -s
        # comment 1
        --arg3 123 \\

          # comment 2
        --arg4 '"string in string"'


        # this will get stripped out as well as the white space above
        -c "'single quoted'"
        """
    )
    assert args == [
        "python", "model1.py",
        "-a", "double quotes",
        "--arg2", "single quotes",
        "-s",
        "--arg3", "123",
        "--arg4", '"string in string"',
        "-c", "'single quoted'",
    ]


def test_split_command_empty():
    with pytest.raises(ValueError, match="empty command"):
        split_command("  # only a comment\n")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("echo hello\necho world", "echo hello\necho world"),
        ("# this is a comment\necho hello", "echo hello"),
        ("   # indented comment\necho hello", "echo hello"),
        ("echo hello\n\necho world", "echo hello\n\necho world"),
        ("# comment 1\n# comment 2", ""),
        ("", ""),
    ],
)
def test_strip_comments(text, expected):
    assert strip_comments(text) == expected


def test_cmd_is_required():
    assert error_of("models:\n  m:\n    proxy: http://localhost:1\n") == "model 'm': cmd is required"


def test_cmd_with_unbalanced_quote():
    message = error_of("models:\n  m:\n    cmd: srv --port ${PORT} \"oops\n")
    assert message.startswith("model 'm' cmd: ")
    assert "quotation" in message


def test_models_or_peers_are_required():
    assert "config has no models" in error_of("healthCheckTimeout: 20\n")
    assert "config has no models" in error_of("models: {}\n")
    config = parse("peers:\n  far:\n    proxy: http://127.0.0.1:9\n    models: [a]\n")
    assert config.models == {} and list(config.peers) == ["far"]


def test_the_old_list_form_of_profiles_is_explained():
    message = error_of("profiles:\n  test: [m]\nmodels:\n  m: {cmd: 'srv ${PORT}'}\n")
    assert message.startswith("profiles.test: profiles are now a mapping with 'description' and 'pins'")


def test_invalid_proxy_url():
    message = error_of("models:\n  m:\n    cmd: srv\n    proxy: localhost:8080\n")
    assert message.startswith("model m: invalid proxy URL 'localhost:8080'")


def test_env_entries_need_a_name_and_value():
    message = error_of("models:\n  m:\n    cmd: srv ${PORT}\n    env: ['JUSTANAME']\n")
    assert message == "model 'm' env: 'JUSTANAME' is not in the form NAME=value"


def test_ttl_minus_one_is_the_global_ttl_and_below_is_an_error():
    config = parse("globalTTL: 300\nmodels:\n  m: {cmd: 'srv ${PORT}', ttl: -1}\n  n: {cmd: 'srv ${PORT}'}\n  o: {cmd: 'srv ${PORT}', ttl: 0}\n")
    assert [config.models[name].ttl for name in "mno"] == [300, 300, 0]
    assert "ttl must be 0 (never unload), -1 (globalTTL)" in error_of("models:\n  m:\n    cmd: srv ${PORT}\n    ttl: -2\n")
    assert error_of("globalTTL: -5\nmodels:\n  m: {cmd: 'srv ${PORT}'}\n") == (
        "globalTTL must be 0 (never unload) or a number of seconds, got -5"
    )


def test_wrong_types_are_named():
    message = error_of("models:\n  m:\n    cmd: srv ${PORT}\n    ttl: soon\n")
    assert message == "model 'm': ttl must be a whole number, got the text 'soon'"
    message = error_of("models:\n  m:\n    cmd: srv ${PORT}\n    aliases: one\n")
    assert message == "model 'm': aliases must be a list, got the text 'one'"
    message = error_of("models:\n  m: just text\n")
    assert "model 'm': expected a mapping of settings" in message


# ---------------------------------------------------------------- filters


def test_strip_params_are_sanitised_and_legacy_name_works():
    config = parse(
        """
        macros:
          default_strip: "temperature, top_p"
        models:
          model1:
            cmd: path/to/cmd --port ${PORT}
            filters:
              stripParams: "model, top_k, top_k, temperature, ${default_strip}, , ,"
          legacy:
            cmd: path/to/cmd --port ${PORT}
            filters:
              strip_params: "model, top_k, top_k, temperature, ${default_strip}, , ,"
        """
    )
    for model_id in ("model1", "legacy"):
        model = config.models[model_id]
        assert model.strip_params == ("temperature", "top_k", "top_p")


# ---------------------------------------------------------------- aliases and groups


def test_aliases_are_globally_unique():
    message = error_of(
        """
        models:
          model1:
            cmd: path/to/cmd --arg1 one
            proxy: "http://localhost:8080"
            aliases: [m1]
          model2:
            cmd: path/to/cmd --arg1 one
            proxy: "http://localhost:8081"
            aliases: [m1, m2]
        """
    )
    assert message == "duplicate alias m1 found in model: model2"


def test_groups_and_default_group():
    config = parse(
        """
        models:
          model1: {cmd: "a", proxy: "http://localhost:8080"}
          model2: {cmd: "a", proxy: "http://localhost:8081"}
          model3: {cmd: "a", proxy: "http://localhost:8081"}
          model4: {cmd: "a", proxy: "http://localhost:8082"}
        groups:
          group1:
            swap: true
            exclusive: false
            members: ["model2"]
          forever:
            exclusive: false
            persistent: true
            members: ["model4"]
        """
    )
    assert config.groups[DEFAULT_GROUP_ID].members == ("model1", "model3")
    assert (config.groups[DEFAULT_GROUP_ID].swap, config.groups[DEFAULT_GROUP_ID].exclusive) == (True, True)
    group1 = config.groups["group1"]
    assert (group1.swap, group1.exclusive, group1.persistent, group1.members) == (True, False, False, ("model2",))
    forever = config.groups["forever"]
    assert (forever.swap, forever.exclusive, forever.persistent) == (True, False, True)
    assert config.group_of("model4") is forever


def test_group_member_in_two_groups():
    message = error_of(
        """
        models:
          model2: {cmd: "a", proxy: "http://localhost:8081"}
        groups:
          group1: {members: ["model2"]}
          group2: {members: ["model2"]}
        """
    )
    assert message == "model member model2 is used in multiple groups: group1 and group2"


def test_group_member_listed_twice():
    message = error_of(
        """
        models:
          model2: {cmd: "a", proxy: "http://localhost:8081"}
        groups:
          group1: {members: ["model2", "model2"]}
        """
    )
    assert message == "duplicate model member model2 found in group: group1"


def test_group_members_that_are_not_models_are_ignored_with_a_warning():
    # the newest llama-swap accepts them; the warning points out the typo
    config = parse(
        """
        models:
          model1: {cmd: "a", proxy: "http://localhost:8081", aliases: [one]}
        groups:
          group1: {members: ["one", "model1"]}
        """
    )
    assert config.groups["group1"].members == ("model1",)
    assert "group 'group1': member 'one' is not a model id, ignored (it is an alias of 'model1': list the model id)" in (
        config.warnings
    )


def test_default_group_name_is_reserved():
    message = error_of(
        """
        models:
          model1: {cmd: "a", proxy: "http://localhost:8081"}
        groups:
          "(default)": {members: ["model1"]}
        """
    )
    assert "reserved" in message


# ---------------------------------------------------------------- hooks


def test_preload_resolves_aliases_and_drops_unknown_models():
    config = parse(
        """
        hooks:
          on_startup:
            preload: [" model1 ", "m2", "", "ghost", "model1"]
        models:
          model1: {cmd: "srv ${PORT}"}
          model2: {cmd: "srv ${PORT}", aliases: [m2]}
        """
    )
    assert config.preload == ("model1", "model2")
    assert any("'ghost' is not a model" in warning for warning in config.warnings)


# ---------------------------------------------------------------- YAML


def test_duplicate_keys_are_an_error():
    message = error_of(
        """
        models:
          m: {cmd: "srv ${PORT}"}
          m: {cmd: "other ${PORT}"}
        """
    )
    assert "key 'm' is defined twice" in message


def test_yaml_syntax_error_is_reported():
    assert error_of("models: [unclosed\n").startswith("invalid YAML:")


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert "cannot read config file" in str(info.value)
    assert "nope.yaml" in str(info.value)


def test_load_config_from_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("models:\n  m:\n    cmd: srv --port ${PORT}\n")
    assert load_config(str(path)).models["m"].cmd == "srv --port 5800"


def test_example_config_is_valid():
    import pathlib

    example = pathlib.Path(__file__).resolve().parents[2] / "config.example.yaml"
    config = load_config(str(example))
    assert config.models and config.peers and config.selectors and config.profiles
    assert config.warnings == ()  # every setting in it is one llamaswap knows


# ---------------------------------------------------------------- reload comparison


def test_changed_models():
    old = parse(
        """
        models:
          keep: {cmd: "srv ${PORT}"}
          edit: {cmd: "srv ${PORT}"}
          gone: {cmd: "srv ${PORT}"}
        """
    )
    new = parse(
        """
        models:
          keep: {cmd: "srv ${PORT}"}
          edit: {cmd: "srv ${PORT} --more"}
          gone2: {cmd: "srv ${PORT}"}
        """
    )
    added, removed, changed = changed_models(old, new)
    assert added == {"gone2"}
    assert removed == {"gone"}
    assert changed == {"edit"}
