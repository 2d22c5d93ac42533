"""The "Python 3 (ceranubis)" kernel: an ipykernel that starts with the extension loaded.

``ceranubis install-kernel [--user|--sys-prefix|--prefix P]`` writes the kernelspec with
this interpreter's path; ``kernel_ext/ceranubis/kernel.json`` in the repository is the
same spec for a manual ``jupyter kernelspec install`` (it runs ``python`` from PATH).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

KERNEL_NAME = "ceranubis"
DISPLAY_NAME = "Python 3 (ceranubis)"
EXTENSION = "ceranubis_jupyter"


def kernel_spec(python: str | None = None) -> dict[str, Any]:
    """The ``kernel.json`` content, running ``python`` (default: this interpreter)."""
    return {
        "argv": [
            python or sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            f"--ext={EXTENSION}",
        ],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
    }


def install_kernel(
    *, user: bool = False, prefix: str | None = None, name: str = KERNEL_NAME
) -> str:
    """Install the kernelspec; returns the directory it was written to.

    Args:
        user: into the user's Jupyter data directory (``~/.local/share/jupyter``).
        prefix: into ``PREFIX/share/jupyter`` (``sys.prefix`` for the current venv).
        name: the kernel's name (``jupyter kernelspec list`` shows it).
    """
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as source:
        (Path(source) / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1) + "\n")
        manager = KernelSpecManager()
        path: str = manager.install_kernel_spec(source, name, user=user, prefix=prefix)
    return path


def add_commands(subparsers: Any) -> None:
    """Register ``ceranubis install-kernel``."""
    parser = subparsers.add_parser(
        "install-kernel", help=f"install the Jupyter kernel {DISPLAY_NAME!r}"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="into this environment")
    where.add_argument("--prefix", default=None, help="into PREFIX/share/jupyter/kernels")
    parser.add_argument("--name", default=KERNEL_NAME)
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install_kernel(user=args.user, prefix=prefix, name=args.name)
    print(f"installed kernel {DISPLAY_NAME!r} in {path}")
    return 0
