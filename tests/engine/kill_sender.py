"""A sending node as its own process, for the kill test.

``python kill_sender.py --config node.toml --to RX2 [--loop uvloop] [--chunk-size N]``

Starts the node (which resumes every unfinished transfer in its ledger), prints
``ready``, then sends each study folder named on a line of stdin, printing
``queued <transfer id> <folder>`` once the transfer is in the ledger. It runs
until killed; the test kills it with SIGKILL at random moments.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path

import anyio
import anyio.to_thread

from dicomrelay.config import NodeConfig
from dicomrelay.node import Node


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(config: NodeConfig, to: str) -> None:
    async with Node(config) as node:
        say("ready")
        while line := await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
            folder = line.strip()
            transfer = await node.send(folder, to=to)
            say(f"queued {transfer.id} {folder}")
        await anyio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--chunk-size", type=int, default=None)
    args = parser.parse_args()
    config = NodeConfig.from_toml(args.config)
    if args.chunk_size:
        limits = dataclasses.replace(config.limits, chunk_size=args.chunk_size)
        config = dataclasses.replace(config, limits=limits)
    try:
        anyio.run(run, config, args.to, backend_options={"use_uvloop": args.loop == "uvloop"})
    except BaseException:
        # The node crashed: say so and go, without waiting for the thread reading stdin.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
