"""
The shipped JSON schema (for editors: yaml-language-server and the like)
and the loader describe the same configuration: the same settings at every
level, the same choices, and documents one refuses the other refuses too.
"""

from __future__ import annotations

import json
import pathlib
import sys
import textwrap
from importlib import resources

import jsonschema
import pytest
import yaml

from llamaswap.config import ConfigError, loader, parse_config
from tests.config.test_newest_example import ENVIRON, companion_text, example_text

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema():
    text = resources.files("llamaswap.config").joinpath("config-schema.json").read_text()
    document = json.loads(text)
    jsonschema.Draft7Validator.check_schema(document)
    return document


def resolve(schema, node):
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def keys(schema, *path) -> set[str]:
    node = schema
    for step in path:
        node = resolve(schema, node)
        node = node["properties"][step] if step != "*" else node["additionalProperties"]
    return set(resolve(schema, node)["properties"])


def test_the_same_settings_at_every_level(schema):
    assert keys(schema) == loader.TOP_LEVEL_KEYS
    assert keys(schema, "models", "*") == loader.MODEL_KEYS
    assert keys(schema, "groups", "*") == loader.GROUP_KEYS
    assert keys(schema, "models", "*", "filters") == loader.FILTER_KEYS
    assert keys(schema, "peers", "*", "filters") == loader.PEER_FILTER_KEYS
    assert keys(schema, "models", "*", "timeouts") == loader.TIMEOUT_KEYS
    assert keys(schema, "models", "*", "capabilities") == loader.CAPABILITY_KEYS
    assert keys(schema, "peers", "*") == loader.PEER_KEYS
    assert keys(schema, "selectors", "*") == loader.SELECTOR_KEYS
    assert keys(schema, "matrix") == loader.MATRIX_KEYS


def test_the_same_choices(schema):
    top = schema["properties"]
    assert tuple(top["logLevel"]["enum"]) == loader.LOG_LEVELS
    assert tuple(top["logToStdout"]["enum"]) == loader.LOG_TO_STDOUT
    assert tuple(top["logTimeFormat"]["enum"]) == loader.LOG_TIME_FORMATS
    routing = top["routing"]["properties"]
    assert tuple(routing["router"]["properties"]["use"]["enum"]) == loader.ROUTERS
    assert tuple(routing["scheduler"]["properties"]["use"]["enum"]) == loader.SCHEDULERS
    selector = top["selectors"]["additionalProperties"]["properties"]
    assert tuple(selector["strategy"]["enum"]) == loader.SELECTOR_STRATEGIES
    capabilities = top["models"]["additionalProperties"]["properties"]["capabilities"]["properties"]
    assert tuple(capabilities["in"]["items"]["enum"]) == loader.MODALITIES


def test_the_examples_are_valid(schema):
    jsonschema.validate(yaml.safe_load((ROOT / "config.example.yaml").read_text()), schema)
    newest = yaml.safe_load(example_text())
    newest["models"].update(yaml.safe_load(companion_text())["models"])
    jsonschema.validate(newest, schema)
    parse_config(yaml.safe_dump(newest), environ=ENVIRON)


BASE = f"""
models:
  a:
    cmd: {sys.executable} -m llamaswap.testing.upstream --port ${{PORT}}
"""


@pytest.mark.parametrize(
    "extra",
    [
        "globalTTL: -5",
        "unloadTimeout: -1",
        "logToStdout: stderr",
        "startPort: 0",
        "apiKeys: ['']",
        "apiKeys: ['two words']",
        "routing: {router: {use: bogus}}",
        "routing: {scheduler: {use: lifo}}",
        "selectors: {s: {strategy: hot, targets: [a]}}",
        "selectors: {s: {strategy: warm, targets: []}}",
        "selectors: {s: {strategy: spillover, targets: [a], settings: {spillover: 0}}}",
        "peers: {p: {models: [x]}}",
        "peers: {p: {proxy: 'ftp://host', models: [x]}}",
        "profiles: {p: {pins: {}}}",
        "matrix: {vars: {a: a}}",
        "groups: {g: {members: [a, a]}}",
        "models: {b: {cmd: x, capabilities: {in: [smell]}}}",
        "upstream: {ignorePaths: 7}",
    ],
)
def test_what_the_loader_refuses_the_schema_refuses(schema, extra):
    text = textwrap.dedent(BASE) + extra + "\n"
    with pytest.raises(ConfigError):
        parse_config(text, environ={})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(text), schema)
