"""Opening a project store: from a path or URL, and one shared store per location.

``open_store`` picks the back end (:mod:`.store_sqlite` or :mod:`.store_pg`) from what it is
given; ``shared_store`` keeps one open store per location in this process, so projects,
their runs and the magics share a connection (and a commit costs no connection or schema
check). ``close_stores`` closes them all (the package's one exit hook calls it). A forked
child starts with none: the parent's are left alone, unclosed, and the child opens its own.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import StoreError
from ..exits import Stage, on_exit
from .store import Store
from .store_sqlite import SQLiteStore

# The environment variable naming the store (a file path or a postgresql:// URL).
STORE_ENV = "CERANUBIS_STORE"

_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()
_inherited: list[Store] = []  # in a forked child, the parent's: never used or closed here


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/ceranubis/projects.sqlite`` (``~/.local/share`` by default)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "ceranubis" / "projects.sqlite"


def is_postgres_url(text: str) -> bool:
    """True for ``postgresql://`` and ``postgres://`` URLs."""
    return text.startswith(("postgresql://", "postgres://"))


def open_store(url_or_path: str | os.PathLike[str] | None = None, *, create: bool = True) -> Store:
    """Open (creating if needed) the project store.

    Args:
        url_or_path: a SQLite file path, ``sqlite:///path``, or a ``postgresql://`` URL;
            ``None`` means ``$CERANUBIS_STORE`` or :func:`default_store_path`.
        create: create or upgrade the tables; ``False`` (a node daemon): only check that
            the project and queue tables are there, of this package's version.

    Raises:
        StoreError: the store cannot be reached, created, or is not a project store.

    Whoever can write the store can run code in the processes that read its results or
    resume its projects (they are pickled): see the README's "Trust and security".
    """
    target = url_or_path if url_or_path is not None else os.environ.get(STORE_ENV) or None
    if target is None:
        return SQLiteStore(default_store_path(), create=create)
    text = os.fspath(target)
    if is_postgres_url(text):
        from .store_pg import PostgresStore  # psycopg is an optional extra

        return PostgresStore(text, create=create)
    if text.startswith("sqlite://"):
        text = text.removeprefix("sqlite://")
    if "://" in text:
        raise StoreError(f"unknown store URL {text!r}: use a file path or a postgresql:// URL")
    return SQLiteStore(text, create=create)


def shared_store(store: Store | str | os.PathLike[str] | None) -> Store:
    """The store to use: as given, or one shared per location in this process."""
    if isinstance(store, Store):
        return store
    if store is None:
        key = os.environ.get(STORE_ENV) or os.fspath(default_store_path())
    else:
        key = os.fspath(store)
    with _stores_lock:
        known = _stores.get(key)
        if known is None:
            known = _stores[key] = open_store(store)
        return known


def close_stores() -> None:
    """Close every store :func:`shared_store` opened (at exit, after runs and executors)."""
    with _stores_lock:
        stores = list(_stores.values())
        _stores.clear()
    for store in stores:
        store.close()


def _forget_after_fork() -> None:
    """In a forked child: the shared stores are the parent's (their connections are its
    sessions): drop them unclosed, their sockets let go (:meth:`Store.leave_to_parent`),
    so that this process opens its own on first use and never touches the parent's."""
    global _stores_lock
    _stores_lock = threading.Lock()  # another thread may have held it at the fork
    for store in _stores.values():
        store.leave_to_parent()
    _inherited.extend(_stores.values())
    _stores.clear()


on_exit(Stage.STORES, close_stores)
if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_after_fork)
