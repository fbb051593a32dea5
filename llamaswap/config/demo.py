"""
The built-in demo configuration.
"""

from __future__ import annotations

import json
import sys
from importlib import resources

from llamaswap.config import Config, parse_config

DEMO_NOTICE = (
    "*** No configuration given and no ./config.yaml found: serving the BUILT-IN DEMO "
    "configuration, whose models are llamaswap's fake upstream. Pass -c config.yaml to serve "
    "real models (see config.example.yaml). ***"
)


def demo_config_text() -> str:
    template = resources.files("llamaswap.config").joinpath("demo.yaml").read_text(encoding="utf-8")
    # Define ${python} as this interpreter, quoted for the command line.
    python = json.dumps(sys.executable)
    return template.replace("macros:\n", f"macros:\n  python: {json.dumps(python)}\n", 1)


def demo_config() -> Config:
    return parse_config(demo_config_text())
