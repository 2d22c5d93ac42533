"""Host groups under faults: a task whose group loses its last host fails, it never hangs.

Tasks of a group wait while a host of the group may still come back (see the partition
test). Once the last one is given up for good, or removed, they fail with an error that
names the group and the hosts' own errors; tasks of other groups go on.
"""

from __future__ import annotations

import time

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.hosts import Host
from ceranubis_jupyter.errors import ConfigError, NoHostsAvailable
from tests.fixtures_ssh import OPENSSH_ALIAS, TEST_PYTHON, OpenSSHServer, SSHHome
from tests.remote import by_value

# Seconds any outcome may take here.
OUTCOME_TIMEOUT = 30.0
# Seconds the group's host gets to answer ssh before it counts as unreachable.
CONNECT_TIMEOUT = 1.0


@by_value
def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_tasks_of_a_group_whose_host_is_given_up_fail(ssh_env: SSHHome, silent_port: int) -> None:
    silent = Host(f"127.0.0.1:{silent_port}", group="far", connect_timeout=CONNECT_TIMEOUT)
    with CeranubisExecutor(["local", silent]) as executor:
        started = time.monotonic()
        far = executor.options(group="far").submit(nap, 0.0)  # queued while it connects
        error = far.exception(timeout=OUTCOME_TIMEOUT)
        assert isinstance(error, NoHostsAvailable), error
        assert "group 'far'" in str(error) and "no ssh answer" in str(error)
        assert time.monotonic() - started < CONNECT_TIMEOUT + 10
        assert executor.submit(nap, 0.0).result(timeout=OUTCOME_TIMEOUT) == 0.0
        late = executor.options(group="far").submit(nap, 0.0)
        assert isinstance(late.exception(timeout=OUTCOME_TIMEOUT), ConfigError)


def test_removing_the_last_host_of_a_group_fails_its_waiting_tasks(
    openssh_server: OpenSSHServer, ssh_env: SSHHome
) -> None:
    grouped = Host(OPENSSH_ALIAS, python=TEST_PYTHON, workers=1, group="ssh")
    with CeranubisExecutor(["local", grouped]) as executor:
        tasks = [executor.options(group="ssh").submit(nap, 0.3) for _ in range(6)]
        assert tasks[0].result(timeout=OUTCOME_TIMEOUT) == 0.3
        executor.remove_hosts(OPENSSH_ALIAS, drain=False)
        outcomes = [f.exception(timeout=OUTCOME_TIMEOUT) for f in tasks[1:]]
        assert all(isinstance(e, NoHostsAvailable) or e is None for e in outcomes), outcomes
        failed = [e for e in outcomes if e is not None]
        assert failed and all("group 'ssh'" in str(e) for e in failed)
        assert executor.submit(nap, 0.0).result(timeout=OUTCOME_TIMEOUT) == 0.0
