"""
The configuration language: YAML in, immutable records out, and every rule
and error message of it.

    - L{records}: the immutable records the rest of llamaswap reads
    - L{loader}: validation and defaults (C{load_config}, C{parse_config})
    - L{sources}: reading and merging the files (C{-c}, C{--config-dir})
    - L{yamlfile}: strict YAML with C{${env.NAME}}
    - L{macros}: C{${name}} substitution
    - L{matrix}: the matrix router's set language and its solver
    - L{changes}: what a reload changes, model by model
    - L{watcher}: noticing that the file changed
    - L{demo}: the built-in demo configuration
"""

from llamaswap.config.changes import changed_models
from llamaswap.config.loader import load_config, parse_config
from llamaswap.config.records import (
    Capabilities,
    Config,
    ConfigError,
    Filters,
    GroupConfig,
    ModelConfig,
    PeerConfig,
    ProfileConfig,
    SelectorConfig,
    Timeouts,
)

__all__ = [
    "Capabilities",
    "Config",
    "ConfigError",
    "Filters",
    "GroupConfig",
    "ModelConfig",
    "PeerConfig",
    "ProfileConfig",
    "SelectorConfig",
    "Timeouts",
    "changed_models",
    "load_config",
    "parse_config",
]
