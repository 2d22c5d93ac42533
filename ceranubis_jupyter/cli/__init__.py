"""The ``ceranubis`` command: one module per group of verbs.

``main`` builds the parser from the verb modules (``demo``, ``kernel``, ``projects``,
``strays``), each of which registers itself through ``add_commands(subparsers)``.

May import: every layer below (``jupyter``, ``projects``, ``cluster``, ``wire``, ``errors``).
Nothing in the package imports ``cli``.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
