"""CLI command modules. Each module defines ``register(app, ls_app)`` and is picked up automatically."""

from ._common import HelpDefaultsCommand, default_of, fill_help_defaults, help_default

__all__ = ["HelpDefaultsCommand", "default_of", "fill_help_defaults", "help_default"]
