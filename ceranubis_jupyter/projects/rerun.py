"""What a re-run finds in the store: the project it is, the version it makes, the results
it can take.

Committing under a name that exists compares the new project's digests (``digest.py``)
with those of the name's latest version:

- same function code, target and arguments: the re-run *is* that project (:class:`Attach`):
  it is followed, and resumed when some arguments have no result yet;
- anything else: a new version of the name (:class:`NewVersion`), which says how it differs
  ("code changed, 10 arguments added"), and with ``replace`` removes the earlier ones.

Whatever the name, an argument whose bytes equal those of a finished argument of a function
with the same code digest takes that result (:func:`reusable_positions`): its row points
at the row holding the result, so reuse adds no copy.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError
from .records import ProjectRow, this_client
from .store import Store

# Prefix of the code digest of a project committed with reuse=False: no lookup matches it,
# so its results are never offered to another project (a re-run of the same project still
# finds it: digests are compared without it).
NO_REUSE = "no-reuse:"


@dataclass(frozen=True)
class Attach:
    """The re-run is the stored project ``row`` (same code, target and arguments)."""

    row: ProjectRow


@dataclass(frozen=True)
class NewVersion:
    """The re-run makes ``version`` of its name; ``replaced``: ids of the earlier versions
    to remove once it is stored (``replace=True``)."""

    version: int = 1
    changes: str = ""
    replaced: list[int] = field(default_factory=list)


def decide(
    store: Store,
    name: str,
    target: str,
    digests: tuple[str, str],
    blobs: Sequence[bytes],
    replace: bool,
) -> Attach | NewVersion:
    """What committing ``name`` with these digests (code, arguments) makes of the store.

    Raises:
        StoreError: ``replace`` and an earlier version runs in another live process.
    """
    latest = store.find_project(name)
    if latest is None:
        return NewVersion()
    same = (latest.target, _plain(latest.code_hash), latest.args_hash) == (
        target,
        _plain(digests[0]),
        digests[1],
    )
    if same and not replace:
        return Attach(latest)
    changes = describe_changes(store, latest, target, digests, blobs)
    replaced = store.versions(name) if replace else []
    return NewVersion(latest.version + 1, changes, replaced)


def describe_changes(
    store: Store,
    before: ProjectRow,
    target: str,
    digests: tuple[str, str],
    blobs: Sequence[bytes],
) -> str:
    """How a new version differs from ``before``: ``code changed, 10 arguments added, 3
    removed`` (arguments compared as multisets of their stored bytes)."""
    code_hash, args_hash = digests
    parts = []
    if before.target != target:
        parts.append(f"function {before.target} → {target}")
    elif _plain(before.code_hash) != _plain(code_hash):
        parts.append("code changed")
    if before.args_hash != args_hash:
        old = collections.Counter(store.argument_blobs(before.id))
        new = collections.Counter(blobs)
        added, removed = sum((new - old).values()), sum((old - new).values())
        if added:
            parts.append(f"{added:,} argument{'s' * (added != 1)} added")
        if removed:
            parts.append(f"{removed:,} removed" if added else f"{removed:,} arguments removed")
        if not added and not removed:
            parts.append("arguments reordered")
    return ", ".join(parts) or "same code and arguments (replaced)"


def _plain(code_hash: str) -> str:
    return code_hash.removeprefix(NO_REUSE)


def reusable_positions(
    store: Store, code_hash: str, blobs: Sequence[bytes], known: dict[bytes, int] | None = None
) -> list[tuple[int, int]]:
    """``(position, holder)`` for each argument of ``blobs`` that a finished argument of a
    function with this code digest already answered (``holder``: that argument's id);
    ``known``: :meth:`Store.reusable` of the digest, when read already."""
    if not code_hash or code_hash.startswith(NO_REUSE):
        return []
    if known is None:
        known = store.reusable(code_hash)
    if not known:
        return []
    return [(at, known[blob]) for at, blob in enumerate(blobs) if blob in known]


def check_replaceable(store: Store, ids: Sequence[int], name: str) -> None:
    """Refuse to replace versions that another live process runs (a run of this process
    is cancelled by the removal).

    Raises:
        ConfigError: one does.
    """
    for project_id in ids:
        row = store.find_project(project_id)
        if row is not None and row.live and row.client != this_client():
            raise ConfigError(
                f"cannot replace project {name!r} version {row.version}: it is running "
                f"(client {row.client}); cancel it first"
            )


__all__ = [
    "NO_REUSE",
    "Attach",
    "NewVersion",
    "check_replaceable",
    "decide",
    "describe_changes",
    "reusable_positions",
]
