"""Stack configuration: which stacks exist, which one is active, and the keys of each.

Stacks are declared in TOML (``stacks.example.toml`` at the repository root documents every key of
every stack type)::

    active_stack = "prod"

    [stacks.prod]
    type = "aws"
    state = "postgresql://kitaru@db.internal/kitaru"
    artifacts = "s3://acme-agents/kitaru"
    region = "eu-west-1"

Where a setting comes from, highest precedence first:

1. a call argument: ``flow.run(..., stack="prod")``, ``KitaruClient(stack="prod")``,
   ``load_stack("prod", region=...)``;
2. the environment: ``KITARU_STACK=<name>`` picks the active stack, and ``KITARU_STACK__<KEY>=<value>``
   overrides key ``<key>`` (lower-cased) of the active stack, e.g. ``KITARU_STACK__REGION=us-east-1``
   or ``KITARU_STACK__STATE=sqlite:////tmp/k.db`` (empty values are ignored). These overrides apply
   to the stack the environment or a file makes active, not to another stack a call argument names;
3. the project file: ``kitaru.toml`` in the current directory or the nearest parent that has one;
4. the user file: ``$KITARU_CONFIG``, else ``$XDG_CONFIG_HOME/kitaru/config.toml``, else
   ``~/.config/kitaru/config.toml``;
5. the default: a stack named ``local`` of type ``local`` with default keys (kitaru's home).

A ``[stacks.NAME]`` table in the project file adds to, and overrides keys of, a table of the same name
in the user file. Files are read with :mod:`tomllib` and merged with pydantic-settings, which is
imported only when there is a file or an override to read: the zero-configuration path stays light.

Mistakes are :class:`~kitaru.errors.KitaruConfigError` naming the file, the line and the key.

The modules behind this facade, each importing only those listed before it:

- ``_files``: where the files are, reading one (tomllib), the line of a key, the environment;
- ``_settings``: the sources merged (``_model``, the pydantic-settings model, imported lazily);
- ``_plugins``: stack types and artifact stores through stevedore, install hints, key checks;
- ``_resolve``: one stack's configuration, checked against its type;
- ``_editor``: ``kitaru stack set/create/delete`` editing the user file (tomlkit, imported lazily).
"""

from __future__ import annotations

from kitaru.stack_config._editor import create_stack as create_stack
from kitaru.stack_config._editor import delete_stack as delete_stack
from kitaru.stack_config._editor import set_active_stack as set_active_stack
from kitaru.stack_config._files import ENV_OVERRIDE_PREFIX as ENV_OVERRIDE_PREFIX
from kitaru.stack_config._files import PROJECT_FILE as PROJECT_FILE
from kitaru.stack_config._files import ConfigFile as ConfigFile
from kitaru.stack_config._files import find_line as find_line
from kitaru.stack_config._files import project_config_path as project_config_path
from kitaru.stack_config._files import read_config_file as read_config_file
from kitaru.stack_config._files import user_config_path as user_config_path
from kitaru.stack_config._plugins import EXTRAS as EXTRAS
from kitaru.stack_config._plugins import stack_type as stack_type
from kitaru.stack_config._plugins import validate_stack_keys as validate_stack_keys
from kitaru.stack_config._resolve import StackConfig as StackConfig
from kitaru.stack_config._resolve import list_stacks as list_stacks
from kitaru.stack_config._resolve import resolve_stack as resolve_stack
from kitaru.stack_config._settings import DEFAULT_STACK as DEFAULT_STACK
from kitaru.stack_config._settings import Settings as Settings
from kitaru.stack_config._settings import load_settings as load_settings

__all__ = [
    "DEFAULT_STACK",
    "ENV_OVERRIDE_PREFIX",
    "EXTRAS",
    "PROJECT_FILE",
    "ConfigFile",
    "Settings",
    "StackConfig",
    "create_stack",
    "delete_stack",
    "find_line",
    "list_stacks",
    "load_settings",
    "project_config_path",
    "read_config_file",
    "resolve_stack",
    "set_active_stack",
    "stack_type",
    "user_config_path",
    "validate_stack_keys",
]
