"""CLI command modules. Each module defines ``register(app, ls_app)`` and is picked up automatically."""

from ._common import HelpDefaultsCommand, cli_errors, default_of, error_text, fill_help_defaults, help_default

__all__ = ["HelpDefaultsCommand", "cli_errors", "default_of", "error_text", "fill_help_defaults", "help_default"]
