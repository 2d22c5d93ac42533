"""Saved setups: the TOML config (host groups used as ``@name`` by the executor, the magic
and the command line; a default store), named jobs, and ``ceranubis hosts``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.config import CONFIG_ENV, LOCAL_CONFIG, expand_host_groups, load_config
from ceranubis_jupyter.errors import ConfigError
from ceranubis_jupyter.jupyter import session
from ceranubis_jupyter.projects.project import Project
from tests.cli_support import Workdir, make_workdir
from tests.fixtures_ssh import (
    OPENSSH_ALIAS,
    TEST_PYTHON,
    OpenSSHServer,
    SSHHome,
    reset_cache,
)

# Two local hosts of their own groups: a two-host group with no SSH needed.
PAIR_CONFIG = '[hosts]\npair = ["local:a", "local:b"]\nboth = ["@pair", "local:c"]\n'
PAIR = {"local:a", "local:b"}


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    return make_workdir(tmp_path)


@pytest.fixture
def pair_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user config file with host groups, named by ``$CERANUBIS_CONFIG``."""
    path = tmp_path / "user" / "config.toml"
    path.parent.mkdir()
    path.write_text(PAIR_CONFIG)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return path


# ---------------------------------------------------------------------- the config file


def test_groups_expand_nest_and_keep_other_specs(pair_config: Path) -> None:
    assert expand_host_groups(["@both", "gpu9"]) == ["local:a", "local:b", "local:c", "gpu9"]
    assert expand_host_groups(["x", "y"]) == ["x", "y"]


def test_the_local_file_adds_to_the_users_and_wins(
    pair_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "project"
    here.mkdir()
    (here / LOCAL_CONFIG).write_text('store = "here.sqlite"\n[hosts]\npair = ["local:z"]\n')
    monkeypatch.chdir(here)
    config = load_config()
    assert config.sources == [pair_config, here / LOCAL_CONFIG]
    assert config.host_groups["pair"] == ["local:z"] and "both" in config.host_groups
    assert config.store == "here.sqlite"


def test_xdg_config_home_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "ceranubis").mkdir(parents=True)
    (tmp_path / "xdg" / "ceranubis" / "config.toml").write_text(PAIR_CONFIG)
    assert expand_host_groups(["@pair"]) == ["local:a", "local:b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hosts\n", "is not valid TOML"),
        ("[hosts]\ngpu = 'gpu1'\n", "hosts.gpu must be a list of strings"),
        ("hosts = 3\n", "[hosts] must be a table"),
        ("[hosts]\na = ['@b']\nb = ['@a']\n", "host groups nest deeper than"),
        ("[hosts]\ngpu = ['gpu1']\n", "unknown host group @nope (known: @gpu; from "),
    ],
)
def test_config_mistakes_are_one_clear_error(pair_config: Path, text: str, message: str) -> None:
    pair_config.write_text(text)
    with pytest.raises(ConfigError) as error:
        expand_host_groups(["@a" if "@b" in text else "@nope"])
    assert message in str(error.value)
    if "nest" not in message:  # each names the file it read
        assert str(pair_config) in str(error.value)


# ---------------------------------------------------------------------- everywhere hosts go


def _square(x: int) -> int:
    return x * x


def test_a_group_in_the_executor(pair_config: Path) -> None:
    with CeranubisExecutor(["@pair"], max_workers=1) as executor:
        assert list(executor.map(_square, range(6))) == [x * x for x in range(6)]
        assert {info.host for info in executor.hosts()} == PAIR


def test_a_group_in_the_magic(pair_config: Path, ipshell: Any) -> None:
    cell = "def square(x):\n    return x * x\n"
    ipshell.run_cell_magic("ceranubis", "square over range(4) --hosts @pair --out grouped", cell)
    executor = session.POOL.latest()
    assert executor is not None
    assert {info.host for info in executor.hosts()} == PAIR
    assert ipshell.user_ns["grouped"].status() == (4, 4)


def test_an_unknown_group_in_the_magic_is_a_usage_error(pair_config: Path, ipshell: Any) -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="unknown host group @gpu"):
        ipshell.run_cell_magic("ceranubis", "f over range(2) --hosts @gpu", "def f(x): pass\n")


def test_a_group_and_the_default_store_in_the_cli(workdir: Workdir) -> None:
    workdir.write_config(f'store = "{workdir.path / "from-config.sqlite"}"\n' + PAIR_CONFIG)
    env = workdir.env()
    del env["CERANUBIS_STORE"]
    workdir.env = lambda: env  # type: ignore[method-assign]
    run = workdir.run("run", "work:square", "--range", "5", "--hosts", "@pair", "--name", "g")
    assert run.returncode == 0, run.stderr
    project = Project.load("g", workdir.path / "from-config.sqlite")
    assert set(project.hosts) == PAIR and project.status() == (5, 5)
    assert not workdir.store.exists()


# ---------------------------------------------------------------------- jobs


def test_job_new_list_update_run_remove(workdir: Workdir) -> None:
    workdir.write_config(PAIR_CONFIG)
    made = workdir.run("job", "new", "sq", "work:square", "--hosts", "local:a", "--range", "4")
    assert made.returncode == 0, made.stderr
    assert workdir.run("job", "remove-host", "sq", "local:a").returncode == 0
    added = workdir.run("job", "add-host", "sq", "local:b", "local:c")
    assert added.stdout == "job sq hosts: local:b,local:c\n"
    assert workdir.run("job", "update", "sq", "--chunksize", "2").returncode == 0
    listing = json.loads(workdir.run("job", "list", "--json").stdout)
    assert listing == {
        "sq": {"target": "work:square", "hosts": "local:b,local:c", "range": ["4"],
               "chunksize": 2},
    }  # fmt: skip
    first = workdir.run("run", "sq", "-o", "first.json", "--quiet")
    assert first.returncode == 0, first.stderr
    assert [r["result"] for r in json.loads((workdir.path / "first.json").read_text())] == [
        0, 1, 4, 9,
    ]  # fmt: skip
    project = Project.load("sq", workdir.store)  # the job's name is its projects' name
    assert set(project.hosts) == {"local:b", "local:c"}
    again = workdir.run("run", "sq", "--range", "2", "6", "-o", "second.json", "--quiet")
    assert again.returncode == 0, again.stderr
    assert [r["args"][0] for r in json.loads((workdir.path / "second.json").read_text())] == [
        2, 3, 4, 5,
    ]  # fmt: skip
    assert Project.load("sq", workdir.store).version == 2
    assert workdir.run("job", "rm", "sq").returncode == 0
    assert workdir.run("job", "list").stdout.startswith("no jobs yet")
    gone = workdir.run("run", "sq")
    assert gone.returncode == 2 and "no job 'sq'" in gone.stderr


def test_job_mistakes_are_one_line(workdir: Workdir) -> None:
    assert workdir.run("job", "new", "sq", "work:square").returncode == 0
    for argv, message in [
        (["job", "new", "sq", "work:square"], "job 'sq' exists"),
        (["job", "update", "sq"], "nothing to update"),
        (["job", "remove-host", "sq", "gpu1"], "job sq has no host 'gpu1'"),
        (["job", "show", "other"], "no job 'other' (saved jobs: sq)"),
        (["job", "new", "bad name", "work:square"], "bad project name"),
    ]:
        run = workdir.run(*argv)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, (argv, run.stderr)
        assert message in run.stderr


def test_the_jobs_file_lives_beside_the_config(workdir: Workdir) -> None:
    assert workdir.run("job", "new", "sq", "work:square").returncode == 0
    saved = json.loads((workdir.config.parent / "jobs.json").read_text())
    assert saved == {"version": 1, "jobs": {"sq": {"target": "work:square"}}}


# ---------------------------------------------------------------------- hosts


def test_hosts_shows_local_and_ssh_rows(
    workdir: Workdir, ssh_env: SSHHome, openssh_server: OpenSSHServer
) -> None:
    workdir.write_config(f'[hosts]\nlab = ["local", "{OPENSSH_ALIAS}"]\n')
    hosts = ["--hosts", "@lab", "--python", TEST_PYTHON]
    reset_cache(openssh_server.cache)
    before = {row["host"]: row for row in json.loads(workdir.run("hosts", *hosts, "--json").stdout)}
    assert before[OPENSSH_ALIAS]["cached"] is False
    only_ssh = ["--hosts", OPENSSH_ALIAS, "--python", TEST_PYTHON]
    ran = workdir.run("run", "work:square", "--range", "2", *only_ssh, "--quiet")
    assert ran.returncode == 0, ran.stderr
    shown = workdir.run("hosts", *hosts, "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {row["host"]: row for row in json.loads(shown.stdout)}
    assert set(rows) == {"local", OPENSSH_ALIAS}
    remote = rows[OPENSSH_ALIAS]
    assert remote["reachable"] and remote["cached"] is True  # the run left the bundle
    assert remote["cores"] >= 1 and remote["python"].count(".") == 2
    assert rows["local"]["cached"] is None
    table = workdir.run("hosts", *hosts)
    head, *lines = table.stdout.splitlines()
    assert head.split() == ["host", "reachable", "python", "cores", "load", "memory", "bundle",
                            "nodes", "ours"]  # fmt: skip
    assert any(line.startswith(OPENSSH_ALIAS) and "cached" in line for line in lines)


def test_an_unreachable_host_is_a_row_and_a_non_zero_exit(workdir: Workdir) -> None:
    from tests.jupyter_support import free_port

    dead = f"nobody@127.0.0.1:{free_port()}"
    shown = workdir.run("hosts", "--hosts", f"local,{dead}")
    assert shown.returncode == 1
    lines = shown.stdout.splitlines()
    assert any(line.startswith(dead) and " no " in line for line in lines)
    assert any(line.startswith(f"{dead}: ") and "cannot connect" in line for line in lines)


def test_hosts_without_hosts_checks_every_configured_host(workdir: Workdir) -> None:
    workdir.write_config(PAIR_CONFIG)
    shown = json.loads(workdir.run("hosts", "--json").stdout)
    assert sorted(row["host"] for row in shown) == ["local:a", "local:b", "local:c"]
    assert all(row["reachable"] for row in shown)


def test_the_env_var_keeps_tests_off_the_real_home() -> None:
    assert os.environ[CONFIG_ENV].endswith("config.toml")
    assert not os.environ[CONFIG_ENV].startswith(str(Path.home() / ".config"))


def test_hosts_watch_refreshes_until_ctrl_c(workdir: Workdir) -> None:
    import signal
    import subprocess

    from tests.cli_support import DEADLINE
    from tests.waiting import wait_for

    output = workdir.path / "watch.txt"
    with output.open("wb") as sink:
        process = workdir.popen("hosts", "--watch", stdout=sink, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: output.read_text().count("reachable") >= 2, DEADLINE, "2 tables")
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=DEADLINE)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130 and err == b"interrupted\n"
    assert output.read_text().count("\x1b[H\x1b[2J") >= 2  # each frame on a cleared screen


def test_a_store_in_the_config_may_start_with_a_tilde(
    pair_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    pair_config.write_text('store = "~/work/projects.sqlite"\n')
    assert load_config().store == str(tmp_path / "work" / "projects.sqlite")
