"""The ``inline_receive`` fast path and interrupts: a Ctrl-C (SIGINT) while the waiting
thread reads for the loop loses neither bytes nor the node's channel.

(That the waiting thread reads its lone result, and the contract with the path off, are
in ``test_fast_path_switches.py``.)
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from ceranubis_jupyter import CeranubisExecutor
from ceranubis_jupyter.cluster.loopthread import _interrupt_deferred
from tests.jupyter_support import execute, reply_of, running_kernel
from tests.remote import by_value, plus_one
from tests.waiting import wait_for

RESULT_TIMEOUT = 30.0


@by_value
def interrupt_then_return(client_pid: int, x: int) -> int:
    import os
    import signal
    import time

    os.kill(client_pid, signal.SIGINT)
    time.sleep(0.2)  # the client's result() is interrupted meanwhile; this task goes on
    return x + 1


def test_a_sigint_during_a_reader_callback_is_raised_once_it_returned() -> None:
    assert threading.current_thread() is threading.main_thread()
    finished = []
    with pytest.raises(KeyboardInterrupt), _interrupt_deferred():
        signal.raise_signal(signal.SIGINT)  # the handler runs here: it must not raise
        finished.append(True)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_no_sigint_no_exception_and_the_handler_is_restored() -> None:
    with _interrupt_deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupted_result_wait_leaves_the_node_and_its_channel_working() -> None:
    with CeranubisExecutor(max_workers=1) as executor:
        assert executor.submit(plus_one, 0).result(RESULT_TIMEOUT) == 1
        nodes = [info.pid for info in executor.hosts()]
        for i in range(5):
            futures = []
            # The SIGINT lands while submit() writes the task (raised once it is written)
            # or while result() waits or reads for the loop.
            with pytest.raises(KeyboardInterrupt):
                futures.append(executor.submit(interrupt_then_return, os.getpid(), i))
                futures[0].result(RESULT_TIMEOUT)
            if futures:
                assert futures[0].result(RESULT_TIMEOUT) == i + 1  # the task went on
            assert [executor.submit(plus_one, k).result(RESULT_TIMEOUT) for k in range(50)] == [
                k + 1 for k in range(50)
            ]
        assert [info.pid for info in executor.hosts()] == nodes  # no node was lost


KERNEL_SETUP = """
import threading
from ceranubis_jupyter import CeranubisExecutor
ex = CeranubisExecutor(max_workers=2)  # one worker stays free after the interrupt
received_in = set()
_on_results = ex.scheduler.on_results
def _spy(link, results):
    received_in.add(threading.get_ident())
    _on_results(link, results)
ex.scheduler.on_results = _spy
"""
# Sequential round trips in a cell: the kernel's main thread runs its own asyncio loop.
KERNEL_ROUND_TRIPS = """
values = [ex.submit(abs, -i).result(30) for i in range(300)]
nodes = [info.pid for info in ex.hosts()]  # the node is up: it answered
print(values == list(range(300)), threading.get_ident() in received_in)
"""
KERNEL_LONG_WAIT = """
import pathlib, time
def mark_then_sleep(path):
    import pathlib, time
    pathlib.Path(path).touch()
    time.sleep(60)
ex.submit(mark_then_sleep, MARK).result()
"""
KERNEL_AFTER = """
print([ex.submit(abs, -i).result(30) for i in range(50)] == list(range(50)),
      [info.pid for info in ex.hosts()] == nodes)
ex.shutdown(wait=False, stop_running=True)
"""


@pytest.mark.timeout(180)
def test_in_a_kernel_a_lone_result_is_read_inline_and_an_interrupt_breaks_nothing(
    tmp_path: Path, jupyter_env: dict[str, str]
) -> None:
    mark = tmp_path / "running"
    with running_kernel(jupyter_env, tmp_path) as (manager, client):
        reply, _ = execute(client, KERNEL_SETUP + f"MARK = {str(mark)!r}")
        assert reply["status"] == "ok", reply
        reply, text = execute(client, KERNEL_ROUND_TRIPS)
        assert reply["status"] == "ok" and text.split() == ["True", "True"], (reply, text)
        msg_id = client.execute(KERNEL_LONG_WAIT)
        wait_for(mark.exists, 60, "the long task started")
        manager.interrupt_kernel()
        reply, _ = reply_of(client, msg_id, 60)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
        reply, text = execute(client, KERNEL_AFTER)
        assert reply["status"] == "ok" and text.split() == ["True", "True"], (reply, text)
