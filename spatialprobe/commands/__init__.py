"""CLI command modules. Each module defines ``register(app, ls_app)`` and is picked up automatically."""

from ._common import HelpDefaultsCommand

__all__ = ["HelpDefaultsCommand"]
