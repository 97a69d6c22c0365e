"""The rate limiter under a flood of distinct clients: memory held and cost per take.

    python -m bench.limiter [--clients 100000]

Runs in-process on MemoryBuckets (the limiter every single-process server
uses): one take for each of N distinct client addresses, as a spoofing or
scanning flood would cause, then reports the limiter's memory (tracemalloc)
and the mean cost of a take while the flood is on, against a take by one
returning client before the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import tracemalloc
from typing import Any

from server.limits.buckets import MAX_BUCKETS, MemoryBuckets


def flood_address(n: int) -> str:
    return f"general:ip:10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def mean_take_us(buckets: MemoryBuckets, keys: list[str], limit: int) -> float:
    async def takes() -> None:
        for key in keys:
            await buckets.take(key, limit)

    started = time.perf_counter()
    asyncio.run(takes())
    return (time.perf_counter() - started) / len(keys) * 1e6


def measure(clients: int) -> dict[str, Any]:
    flood = [flood_address(n) for n in range(clients)]
    steady = ["general:sub:steady"] * 10_000

    # Time first, without tracemalloc (which slows every allocation).
    buckets = MemoryBuckets()
    steady_us = mean_take_us(buckets, steady, 1_000_000)
    flood_us = mean_take_us(buckets, flood, 120)
    after_us = mean_take_us(buckets, steady, 1_000_000)

    tracemalloc.start()
    buckets = MemoryBuckets()
    before = tracemalloc.get_traced_memory()[0]

    async def flood_of_keys() -> None:
        for n in range(clients):  # keys made here, as requests would make them
            await buckets.take(flood_address(n), 120)

    asyncio.run(flood_of_keys())
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "clients": clients,
        "buckets_kept": len(buckets),
        "bucket_cap": MAX_BUCKETS,
        "memory_bytes": held,
        "take_us_before_flood": round(steady_us, 2),
        "take_us_during_flood": round(flood_us, 2),
        "take_us_after_flood": round(after_us, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter", description=__doc__)
    parser.add_argument("--clients", type=int, default=100_000)
    args = parser.parse_args(argv)
    result = measure(args.clients)
    print(
        f"limiter: {result['clients']:,} distinct clients -> {result['buckets_kept']:,} buckets "
        f"kept (cap {result['bucket_cap']:,}), {result['memory_bytes'] / 2**20:.2f} MiB held; "
        f"a take costs {result['take_us_before_flood']} us before the flood, "
        f"{result['take_us_during_flood']} us during it, {result['take_us_after_flood']} us after"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
