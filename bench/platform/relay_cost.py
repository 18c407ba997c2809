"""The relay's cost per outbox entry, alone: `python -m bench.platform.relay_cost [--entries N] [--rounds R]`.

Each round commits N entries at once (one statement) while the relay runs by itself, and waits until all
are sent: the relay publishes them flat out in batches of `relay.batch_size`. Printed per round: entries per
second and the CPU milliseconds per entry of the relay, PostgreSQL and RabbitMQ. Nothing consumes the
messages (the work queues are purged after each round), so this measures publishing alone, without the
gateway or the services sharing the cores: the figure to compare when the relay's publishing changes. In
`make bench-platform` the relay's cost shows inside the pipeline's and the POST saturation's figures, where
its batches are smaller (it polls every `relay.busy_poll_interval_s` while submissions arrive).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.platform.scenarios import drain_outbox
from bench.platform.stack import CpuMeter, Stack

#: Outbox entries of audio.probe jobs (their job rows need not exist: the relay reads only the outbox).
FILL = """
insert into outbox (job_id, routing_key, payload, headers)
select md5(g::text), 'audio.probe',
       jsonb_build_object('job_id', md5(g::text), 'type', 'audio.probe', 'tenant_id', 'bench',
                          'file_id', 'bench', 'params', '{}'::jsonb),
       '{}'::jsonb
from generate_series(1, $1) g
"""


async def fill(dsn: str, entries: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(FILL, entries)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.platform.relay_cost", description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000, help="outbox entries per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, Stack(Path(work)) as stack:
        stack.start("relay")
        time.sleep(2)  # its first round declares the topology
        for number in range(args.rounds):
            with CpuMeter(stack.pids()) as cpu:
                started = time.perf_counter()
                asyncio.run(fill(stack.dsn, args.entries))
                asyncio.run(drain_outbox(stack))
                wall_s = time.perf_counter() - started
            per = cpu.per_job_ms(args.entries)
            print(
                f"relay round {number}: {args.entries / wall_s:,.0f} entries/s; CPU ms per entry: "
                f"relay {per['relay']}, postgres {per['postgres']}, rabbitmq {per['rabbitmq']}",
                flush=True,
            )
            stack.purge_work_queues()


if __name__ == "__main__":
    main()
