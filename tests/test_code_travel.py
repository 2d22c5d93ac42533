"""The user's modules travel with the work (cluster/modules.py, node/code.py).

A module and a package written to a temporary directory, installed nowhere, run on a
network-namespace host whose Python is the bare system one (no dill, nothing of ours): the
client sends their source. An edit runs the new code; a warm host cache means no source
bytes at all. Local nodes import what the kernel imports through ``PYTHONPATH`` and ``.pth``
files (hooks included).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.errors import UnpicklableError
from tests.fixtures_ssh import OPENSSH_ALIAS, TEST_PYTHON, SSHHome
from tests.remote import by_value
from tests.test_ssh_netns import NetnsHost, netns_hosts  # noqa: F401  (the fixture)

# The host's own Python, without dill or anything else installed: a bare host.
BARE_PYTHON = "/usr/bin/python3"
RESULT_TIMEOUT = 60.0


class UserCode:
    """A module and a package of unique names in a directory on the client's path."""

    def __init__(self, root: Path) -> None:
        tag = f"{os.getpid()}_{abs(hash(root)) % 10**6}"
        self.root = root
        root.mkdir()
        self.module = f"cj_helpers_{tag}"
        self.package = f"cj_pkg_{tag}"
        self.write_module("v1")
        (root / self.package).mkdir()
        (root / self.package / "__init__.py").write_text("from .core import double\n")
        (root / self.package / "core.py").write_text(
            "import os\n\ndef double(x):\n    return 2 * x, os.path.dirname(__file__)\n"
        )

    def write_module(self, version: str) -> None:
        (self.root / f"{self.module}.py").write_text(
            textwrap.dedent(f"""\
                import os

                def where(x):
                    return {version!r}, x, os.path.dirname(__file__)
                """)
        )

    def imported(self, name: str) -> ModuleType:
        return importlib.import_module(name)


@pytest.fixture
def user_code(tmp_path: Path) -> Iterator[UserCode]:
    code = UserCode(tmp_path / "src")
    sys.path.insert(0, str(code.root))
    importlib.invalidate_caches()
    try:
        yield code
    finally:
        sys.path.remove(str(code.root))
        for name in [m for m in sys.modules if m.startswith((code.module, code.package))]:
            del sys.modules[name]


def _bare(host: NetnsHost) -> Host:
    return Host(host.alias, python=BARE_PYTHON, workers=1)


def test_a_module_and_a_package_run_on_a_bare_host_edits_travel_warm_cache_sends_nothing(
    netns_hosts: list[NetnsHost],  # noqa: F811
    ssh_env: SSHHome,
    user_code: UserCode,
) -> None:
    host = netns_hosts[0]
    helpers = user_code.imported(user_code.module)
    package = user_code.imported(user_code.package)
    code_dir = host.server.cache / "ceranubis" / "code"
    with CeranubisExecutor([_bare(host)]) as executor:
        version, value, where = executor.submit(helpers.where, 1).result(RESULT_TIMEOUT)
        doubled, package_dir = executor.submit(package.double, 21).result(RESULT_TIMEOUT)
        first = executor.code_bytes_sent
        assert (version, value, doubled) == ("v1", 1, 42)
        assert Path(where).parent == code_dir  # imported from the pack, nowhere else
        assert Path(package_dir).parent.parent == code_dir
        assert first > 0
        user_code.write_module("v2 (edited)")  # the client's module object is unchanged
        version, _, _ = executor.submit(helpers.where, 2).result(RESULT_TIMEOUT)
        assert version == "v2 (edited)"
        assert executor.code_bytes_sent > first
    with CeranubisExecutor([_bare(host)]) as executor:  # a third run: the host has it all
        assert executor.submit(helpers.where, 3).result(RESULT_TIMEOUT)[0] == "v2 (edited)"
        assert executor.submit(package.double, 4).result(RESULT_TIMEOUT)[0] == 8
        assert executor.code_bytes_sent == 0


@by_value
def import_and_call(name: str, x: int) -> object:
    import importlib

    return importlib.import_module(name).where(x)[:2]


def test_a_module_only_the_arguments_name_is_sent_when_a_worker_misses_it(
    openssh_server: object, hosts_openssh: list[Host], user_code: UserCode
) -> None:
    user_code.imported(user_code.module)  # the client has it; the function does not say so
    with CeranubisExecutor(hosts_openssh, max_workers=1) as executor:
        result = executor.submit(import_and_call, user_code.module, 5).result(RESULT_TIMEOUT)
        assert result == ("v1", 5)
        assert executor.code_bytes_sent > 0


def test_automatic_shipping_can_be_turned_off_and_modules_named_instead(
    openssh_server: object, hosts_openssh: list[Host], user_code: UserCode
) -> None:
    helpers = user_code.imported(user_code.module)
    with CeranubisExecutor(hosts_openssh, max_workers=1, auto_modules=False) as executor:
        with pytest.raises(UnpicklableError, match=f"No module named '{user_code.module}'"):
            executor.submit(helpers.where, 1).result(RESULT_TIMEOUT)
        assert executor.code_bytes_sent == 0
    hosts = hosts_openssh
    with CeranubisExecutor(
        hosts, max_workers=1, auto_modules=False, modules=[user_code.module]
    ) as executor:
        assert executor.submit(helpers.where, 1).result(RESULT_TIMEOUT)[:2] == ("v1", 1)


LOCAL_CLIENT = """
import site, sys
site.addsitedir({site_dir!r})  # as a sitecustomize or a notebook would
import via_pythonpath, via_pth, via_hook
from ceranubis_jupyter import CeranubisExecutor

def probe():
    import via_hook, via_pth, via_pythonpath
    return via_pythonpath.NAME, via_pth.NAME, via_hook.NAME

probe.__module__ = "__main__"
with CeranubisExecutor(max_workers=1, auto_modules=False) as ex:
    print(ex.submit(probe).result(60))
"""


def test_a_local_node_imports_through_pythonpath_and_pth_files_and_their_hooks(
    tmp_path: Path,
) -> None:
    on_path, site_dir, listed = tmp_path / "pp", tmp_path / "site", tmp_path / "listed"
    for folder in (on_path, site_dir, listed):
        folder.mkdir()
    (on_path / "via_pythonpath.py").write_text("NAME = 'pythonpath'\n")
    (listed / "via_pth.py").write_text("NAME = 'pth'\n")
    (site_dir / "hook.py").write_text(
        textwrap.dedent("""\
            import sys, types
            def install():
                module = types.ModuleType("via_hook")
                module.NAME = "hook"
                sys.modules["via_hook"] = module
            """)
    )
    (site_dir / "paths.pth").write_text(f"{listed}\nimport hook; hook.install()\n")
    script = tmp_path / "client.py"
    script.write_text(LOCAL_CLIENT.format(site_dir=str(site_dir)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(on_path), _worktree()])}
    done = subprocess.run(
        [TEST_PYTHON, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "('pythonpath', 'pth', 'hook')"


def _worktree() -> str:
    return str(Path(__file__).resolve().parent.parent)


def test_the_cell_magic_sends_modules_and_files(
    ipshell: Any,
    openssh_server: object,
    ssh_env: SSHHome,
    user_code: UserCode,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "one.txt").write_text("from the data directory")
    module = user_code.module
    cell = (
        f"import {module}\n"
        "def use(x):\n"
        f"    return {module}.where(x)[0], open('data/one.txt').read()\n"
    )
    line = f"use over [(1,)] --hosts {OPENSSH_ALIAS} --modules {module} --files data --name tr"
    ipshell.run_cell_magic("ceranubis", line, cell)
    project = ipshell.user_ns["tr"]
    assert project.state == "done"
    assert [value for _args, value in project.results()] == [("v1", "from the data directory")]


def test_old_unused_code_packs_are_pruned_recent_ones_kept(tmp_path: Path) -> None:
    from ceranubis_jupyter.node import code

    packs = []
    for i in range(code.KEEP_PACKS + 5):
        pack = tmp_path / f"{i:064x}"
        pack.mkdir()
        os.utime(pack, (1e9 + i, 1e9 + i))  # long unused, the higher i the more recent
        packs.append(pack)
    fresh = tmp_path / ("f" * 64)
    fresh.mkdir()  # used just now
    leftover = tmp_path / ".tmp-abc"
    leftover.mkdir()
    os.utime(leftover, (1e9, 1e9))
    code.prune(str(tmp_path))
    kept = sorted(p.name for p in tmp_path.iterdir())
    expected = sorted([fresh.name, *(p.name for p in packs[-(code.KEEP_PACKS - 1) :])])
    assert kept == expected


def test_local_workers_run_an_edited_module_without_a_reload(
    user_code: UserCode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    helpers = user_code.imported(user_code.module)
    with CeranubisExecutor(max_workers=1) as executor:
        assert executor.submit(helpers.where, 1).result(RESULT_TIMEOUT)[0] == "v1"
        user_code.write_module("v2")  # the kernel's module object is the old one
        assert executor.submit(helpers.where, 2).result(RESULT_TIMEOUT)[0] == "v2"
