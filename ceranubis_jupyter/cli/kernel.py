"""``ceranubis install-kernel``: the verb over :mod:`~ceranubis_jupyter.jupyter.kernelspec`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..jupyter.kernelspec import DISPLAY_NAME, KERNEL_NAME, install_kernel


def add_commands(subparsers: Any) -> None:
    """Register ``ceranubis install-kernel``."""
    parser = subparsers.add_parser(
        "install-kernel", help=f"install the Jupyter kernel {DISPLAY_NAME!r}"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="into this environment")
    where.add_argument("--prefix", default=None, help="into PREFIX/share/jupyter/kernels")
    parser.add_argument(
        "--name", default=KERNEL_NAME, help="the kernel's directory name (default: %(default)s)"
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install_kernel(user=args.user, prefix=prefix, name=args.name)
    print(f"installed kernel {DISPLAY_NAME!r} in {path}")
    return 0
