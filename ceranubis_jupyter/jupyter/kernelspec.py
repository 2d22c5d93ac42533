"""The "Python 3 (ceranubis)" kernel: an ipykernel that starts with the extension loaded.

``ceranubis install-kernel [--user|--sys-prefix|--prefix P]`` writes the kernelspec with
this interpreter's path; ``kernel_ext/ceranubis/kernel.json`` in the repository is the
same spec for a manual ``jupyter kernelspec install`` (it runs ``python`` from PATH).
"""

from __future__ import annotations

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
