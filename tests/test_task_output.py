"""What a task prints, chunked for streaming (node side) and echoed with its host (client)."""

from __future__ import annotations

import threading

from ceranubis_jupyter.cluster.echo import prefixed
from ceranubis_jupyter.node.output import CUT_NOTE, OUTPUT_LIMIT, TaskOutput
from ceranubis_jupyter.wire import protocol as p


def fresh() -> tuple[TaskOutput, list[None]]:
    wakes: list[None] = []
    return TaskOutput(7, lambda: wakes.append(None), threading.Lock()), wakes


def chunks(results: list[p.Result]) -> list[tuple[bytes, str]]:
    assert all(r.status == p.OUTPUT and r.task_id == 7 for r in results)
    return [(bytes(r.payload), r.output) for r in results]


def test_a_running_task_sends_whole_lines_only_and_the_rest_at_its_end() -> None:
    output, wakes = fresh()
    output.write(p.STDOUT, "one\ntw")
    assert chunks(output.take(final=False)) == [(p.STDOUT, "one\n")]
    output.write(p.STDOUT, "o")
    assert output.take(final=False) == []
    output.write(p.STDOUT, " end\nthree")
    assert chunks(output.take(final=False)) == [(p.STDOUT, "two end\n")]
    assert chunks(output.take(final=True)) == [(p.STDOUT, "three")]
    assert output.take(final=True) == [] and output.take(final=False) == []
    assert output.text() == "one\ntwo end\nthree"
    assert len(wakes) == 3, "the streamer is woken once per take, not per write"


def test_streams_keep_their_order_and_names() -> None:
    output, _ = fresh()
    output.write(p.STDOUT, "a\n")
    output.write(p.STDERR, "oops\n")
    output.write(p.STDOUT, "b\n")
    assert chunks(output.take(final=False)) == [
        (p.STDOUT, "a\n"),
        (p.STDERR, "oops\n"),
        (p.STDOUT, "b\n"),
    ]
    assert output.text() == "a\noops\nb\n" and output.streamed


def test_output_is_cut_at_the_limit_and_says_so() -> None:
    output, _ = fresh()
    output.write(p.STDOUT, "x" * (OUTPUT_LIMIT + 10))
    sent = chunks(output.take(final=True))
    assert sent == [(p.STDOUT, "x" * OUTPUT_LIMIT), (p.STDERR, CUT_NOTE)]
    assert output.text().endswith(CUT_NOTE)


def test_the_client_prefixes_each_line_with_its_host() -> None:
    assert prefixed("gpu1", "a\nb\n") == "[gpu1] a\n[gpu1] b\n"
    assert prefixed("gpu1", "no newline") == "[gpu1] no newline\n"
    assert prefixed("gpu1", "") == ""
