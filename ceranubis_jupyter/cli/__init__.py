"""The ``ceranubis`` command: one module per group of verbs.

``main`` builds the parser from the verb modules, each of which registers itself through
``add_commands(subparsers)``: ``run`` (``ceranubis run``, and through ``jobs`` the
``ceranubis job`` verbs), ``hosts``, ``demo``, ``kernel``, ``projects`` (projects, show,
results, resume, rm) and ``strays``. Helpers: ``target`` (what TARGET names and how it
travels), ``arguments`` (``--range`` and ``--args`` files), ``sink`` (``-o``: results
streamed to a file renamed into place at the end), ``progress`` (the live bar and the plain
lines), ``output`` (atomic files, printable text, ``-v``).

May import: every layer below (``jupyter``, ``projects``, ``cluster``, ``wire``,
``config``, ``errors``). Nothing in the package imports ``cli``.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
