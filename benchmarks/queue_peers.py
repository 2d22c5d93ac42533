"""The queue peers of Q1-Q3: pgqueuer and procrastinate, as consumers and as producers.

Run as a program, this is one consumer process:
``python queue_peers.py pgqueuer URL [--count N]`` or ``python queue_peers.py procrastinate
URL [--count N]``: ``N`` consumers (each with its own connections) in one process, each in
the peer's fastest documented configuration for many small jobs (pgqueuer: a dequeue batch
of ``PGQUEUER_BATCH``; procrastinate: ``PROCRASTINATE_CONCURRENCY`` jobs at once). It prints
``ready`` once the consumers are built and, for every Q2 job, ``start <time.time()>`` the
moment the job starts. Imported, it gives the producer side: schema set-up, enqueueing
and how many jobs are left.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

# pgqueuer's dequeue batch: its documented knob for throughput (default 10; measured here
# 5,900 jobs/s with the default and 15,500 with 100). Larger batches make one consumer
# hold more jobs that another could run.
PGQUEUER_BATCH = 100
# procrastinate's jobs in flight per worker (default 1): its documented knob for
# throughput with asynchronous tasks; each fetch takes a connection of the pool.
PROCRASTINATE_CONCURRENCY = 16
# procrastinate's pool size per consumer: one connection per job in flight, plus the
# LISTEN connection and one for heartbeats.
PROCRASTINATE_POOL = PROCRASTINATE_CONCURRENCY + 4
# The payload (pgqueuer) or argument (procrastinate) that marks a Q2 job: it reports its
# start time on stdout.
Q2_MARK = -1
ENTRYPOINT = "inc"


def handle(value: int) -> int:
    """The tiny task; a Q2 job also says when it started."""
    if value == Q2_MARK:
        print(f"start {time.time()}", flush=True)
    return value + 1


# -- pgqueuer ------------------------------------------------------------------------------


async def _pgqueuer_queries(url: str) -> tuple[Any, Any]:
    """A connection and pgqueuer's queries over it, with asyncpg: the driver of pgqueuer's
    own benchmarks (measured here: ~3x the jobs/s of its psycopg driver)."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    connection = await asyncpg.connect(url)
    return connection, Queries(AsyncpgDriver(connection))


async def _pgqueuer_manager(url: str) -> Any:
    from pgqueuer import Job, QueueManager

    _, queries = await _pgqueuer_queries(url)
    manager = QueueManager(queries)

    @manager.entrypoint(ENTRYPOINT)
    async def inc(job: Job) -> None:
        handle(int(job.payload or b"0"))

    return manager


async def pgqueuer_consume(url: str, count: int) -> None:
    """Run ``count`` pgqueuer consumers until the process is ended."""
    managers = [await _pgqueuer_manager(url) for _ in range(count)]
    print("ready", flush=True)
    await asyncio.gather(*(m.run(batch_size=PGQUEUER_BATCH) for m in managers))


async def pgqueuer_setup(url: str) -> None:
    """Install pgqueuer's schema."""
    connection, queries = await _pgqueuer_queries(url)
    await queries.install()
    await connection.close()


class PgqueuerProducer:
    """Enqueues pgqueuer jobs over one open connection (opened by ``open``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: Any = None
        self.queries: Any = None

    async def open(self) -> None:
        self.connection, self.queries = await _pgqueuer_queries(self.url)

    async def enqueue(self, values: list[int]) -> None:
        """One job per value, in one statement (pgqueuer's batch enqueue)."""
        await self.queries.enqueue(
            [ENTRYPOINT] * len(values), [str(v).encode() for v in values], [0] * len(values)
        )

    async def close(self) -> None:
        await self.connection.close()


PGQUEUER_LEFT = "SELECT count(*) FROM pgqueuer"

# -- procrastinate -------------------------------------------------------------------------


def _procrastinate_app(url: str, pool: int) -> Any:
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=url, min_size=1, max_size=pool))

    @app.task(name=ENTRYPOINT)
    async def inc(value: int) -> int:
        return handle(value)

    return app


async def _procrastinate_worker(url: str) -> None:
    app = _procrastinate_app(url, PROCRASTINATE_POOL)
    async with app.open_async():
        await app.run_worker_async(
            concurrency=PROCRASTINATE_CONCURRENCY, install_signal_handlers=False
        )


async def procrastinate_consume(url: str, count: int) -> None:
    """Run ``count`` procrastinate workers until the process is ended."""
    print("ready", flush=True)
    await asyncio.gather(*(_procrastinate_worker(url) for _ in range(count)))


async def procrastinate_setup(url: str) -> None:
    """Apply procrastinate's schema."""
    app = _procrastinate_app(url, 2)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


class ProcrastinateProducer:
    """Defers procrastinate jobs through one open app (opened by ``open``)."""

    def __init__(self, url: str) -> None:
        self.app = _procrastinate_app(url, 2)

    async def open(self) -> None:
        await self.app.open_async()

    async def enqueue(self, values: list[int]) -> None:
        """One job per value in one batch (procrastinate's ``batch_defer_async``)."""
        task = self.app.configure_task(ENTRYPOINT)
        await task.batch_defer_async(*({"value": v} for v in values))

    async def close(self) -> None:
        await self.app.close_async()


PROCRASTINATE_LEFT = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"

CONSUMERS = {"pgqueuer": pgqueuer_consume, "procrastinate": procrastinate_consume}
SETUP = {"pgqueuer": pgqueuer_setup, "procrastinate": procrastinate_setup}
PRODUCERS = {"pgqueuer": PgqueuerProducer, "procrastinate": ProcrastinateProducer}
LEFT = {"pgqueuer": PGQUEUER_LEFT, "procrastinate": PROCRASTINATE_LEFT}
# What each peer's tables are emptied with between samples.
CLEAR = {
    "pgqueuer": "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics",
    "procrastinate": "TRUNCATE procrastinate_jobs CASCADE",
}


def main() -> int:
    """Run one consumer process (see the module's docstring)."""
    parser = argparse.ArgumentParser(description="one queue-peer consumer process")
    parser.add_argument("peer", choices=sorted(CONSUMERS))
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=1, help="consumers in this process")
    args = parser.parse_args()
    asyncio.run(CONSUMERS[args.peer](args.url, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
