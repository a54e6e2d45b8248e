#!/usr/bin/env python3
"""Benchmark peer: SegmentRetryWorkflow on Temporal's Python SDK, in one process.

    python worker.py --address 127.0.0.1:7233 --task-queue Q [--namespace default] [--gpu-ms 0]

Prints `ready` once the worker polls; SIGTERM or SIGINT shuts it down gracefully (in-flight
activities get up to 5 s to finish) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from temporalio.client import Client  # noqa: E402
from temporalio.service import GrpcCompression  # noqa: E402
from temporalio.worker import Worker  # noqa: E402
from temporalio.worker.workflow_sandbox import (  # noqa: E402
    SandboxedWorkflowRunner,
    SandboxRestrictions,
)

from peer_activities import Activities  # noqa: E402
from peer_workflow import SegmentRetryWorkflow  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--address", default="127.0.0.1:7233", help="Temporal frontend host:port")
    p.add_argument("--task-queue", required=True)
    p.add_argument("--namespace", default="default")
    p.add_argument(
        "--gpu-ms",
        type=int,
        default=300,
        help="simulated GPU time per attempt in ms (the Rust worker's RETAKE_SIM_GPU_MS)",
    )
    p.add_argument(
        "--grpc-compression",
        choices=["none", "gzip"],
        default=os.environ.get("RETAKE_GRPC_COMPRESSION", "none"),
        help="gRPC compression to and from Temporal (the Rust worker's --grpc-compression,"
        " default none there too; the Python SDK's own default is gzip)",
    )
    p.add_argument(
        "--db",
        required=True,
        help="SQLite file the store steps write (created with the Rust worker's schema)",
    )
    return p.parse_args()


async def main() -> int:
    args = parse_args()
    compression = {"none": GrpcCompression.NONE, "gzip": GrpcCompression.GZIP}
    client = await Client.connect(
        args.address,
        namespace=args.namespace,
        grpc_compression=compression[args.grpc_compression],
    )
    activities = Activities(max(args.gpu_ms, 0), args.db)
    # The SDK's default sandboxed runner; the pure domain module is passed through (imported
    # once, not per workflow run), the recommended practice for deterministic helper modules.
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("peer_domain")
    )
    worker = Worker(
        client,
        task_queue=args.task_queue,
        workflows=[SegmentRetryWorkflow],
        activities=activities.all(),
        workflow_runner=runner,
        # Same as the Rust worker (worker/src/worker.rs); other options are SDK defaults.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
        # On SIGTERM, in-flight activities get up to 5 s to finish before they are cancelled.
        graceful_shutdown_timeout=timedelta(seconds=5),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run = asyncio.create_task(worker.run())
    # The worker validated its registration and started its pollers once run() has been
    # scheduled; give it one loop turn and fail early if it died.
    await asyncio.sleep(0.2)
    if run.done():
        await run  # raises the startup error
        return 1
    print("ready", flush=True)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not run.done():
        await worker.shutdown()
    await run
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
