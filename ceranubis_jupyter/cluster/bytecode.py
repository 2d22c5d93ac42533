"""The bytecode shipped with a bundle, so that a cold host compiles nothing.

A host unpacks ``<dir>/__pycache__/<module>.<cache_tag>.pyc`` beside each source; its
Python imports them when its cache tag is the client's (the handshake insists on the
client's major.minor anyway) and looks past them otherwise; one whose magic number differs
(a pre-release of the same version) rejects them and compiles, and writes its own.

They are built with public APIs only: the code of the pyc this interpreter already wrote for
the installed file when Python itself would use it (``importlib.util.cache_from_source``:
~1 ms for the node's ~36 modules), else ``compile()`` (~60-90 ms), under a PEP 552 header.

The pycs are hash-based and *unchecked*: BOOT hashes every source against the bundle's digest
before it runs anything, so re-hashing each source on every import, as a checked pyc would,
guards nothing more; nor would it guard against a planted pyc (its hash is computed from the
source, not from the code the pyc holds): see the note above ``bootstrap.BOOT``.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import sys
from collections.abc import Mapping

# PEP 552's flag bits: the pyc is hash-based; its source is checked on import.
_HASH_BASED = 0b01
_CHECK_SOURCE = 0b10
# The flags word of the pycs shipped: hash-based, the source not checked on import.
UNCHECKED_HASH_PYC = _HASH_BASED
# Bytes of a pyc's header: magic, flags, then the source hash (or its mtime and size).
PYC_HEADER = 16
_SHIPPED_HEADER = importlib.util.MAGIC_NUMBER + UNCHECKED_HASH_PYC.to_bytes(4, "little")


def bytecode(
    sources: Mapping[str, bytes], cache_tag: str | None, origins: Mapping[str, str] | None = None
) -> dict[str, bytes]:
    """``<dir>/__pycache__/<module>.<cache_tag>.pyc`` → the pyc of each ``.py`` in
    ``sources`` (archive name → bytes), as a host's Python (no ``-O``) would compile it.

    ``origins`` names the installed file each source was read from: when ``cache_tag`` is
    this interpreter's, its own pyc of that file is reused where Python would use it. A
    source that does not compile here is left to the host, which reports it as it would.
    """
    if cache_tag is None:
        return {}
    ours, origins = cache_tag == sys.implementation.cache_tag, origins or {}
    pycs = {}
    for name, source in sources.items():
        folder, _, filename = name.rpartition("/")
        if not filename.endswith(".py"):
            continue
        source_hash = importlib.util.source_hash(source)
        code = None
        if ours and name in origins:
            code = _installed_code(origins[name], source, source_hash)
        if code is None:
            try:
                code = marshal.dumps(compile(source, name, "exec", dont_inherit=True, optimize=0))
            except (SyntaxError, ValueError):
                continue
        prefix = f"{folder}/" if folder else ""
        pycs[f"{prefix}__pycache__/{filename[:-3]}.{cache_tag}.pyc"] = (
            _SHIPPED_HEADER + source_hash + code
        )
    return pycs


def _installed_code(path: str, source: bytes, source_hash: bytes) -> bytes | None:
    """The marshalled code of the pyc this interpreter wrote for ``path`` (non-optimized), if
    Python would use it for ``source``: its magic, then the source's hash, or (a timestamp
    pyc) the file's mtime and the source's size, as the import system checks them. So the
    host runs what an import here would run (a file rewritten within the same second at
    the same size keeps its old timestamp pyc, there as here)."""
    try:
        with open(importlib.util.cache_from_source(path, optimization=""), "rb") as cached:
            pyc = cached.read()
        mtime = int(os.stat(path).st_mtime)
    except (OSError, ValueError, NotImplementedError):
        return None
    if len(pyc) <= PYC_HEADER or pyc[:4] != importlib.util.MAGIC_NUMBER:
        return None
    flags = int.from_bytes(pyc[4:8], "little")
    if flags & ~(_HASH_BASED | _CHECK_SOURCE):
        return None
    if flags & _HASH_BASED:
        expected = source_hash
    else:
        expected = (mtime & 0xFFFFFFFF).to_bytes(4, "little")
        expected += (len(source) & 0xFFFFFFFF).to_bytes(4, "little")
    return pyc[PYC_HEADER:] if pyc[8:PYC_HEADER] == expected else None
