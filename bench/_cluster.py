"""1 vs 3 nodes: request/reply through a 3-node loopback cluster against the same on one node.

The cluster side starts its own :class:`conat.testing.LocalCluster` (untimed) and puts the
responder on node 0 and the requester on node 2, so every request and every reply crosses a route;
the baseline runs the same code with both clients on the one bench server. Both sides are conat,
so the ratio is what the cluster's extra hop costs, not a client's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Final

import conat
from conat.testing import LocalCluster

from ._harness import CPU_KEY, Bench, Metric, Sample, Stamp, percentile

__all__ = ["cluster_benches"]

SIZE: Final = 128
WARMUP: Final = 50


async def _serial_requests(serve_url: str | list[str], call_url: str | list[str], count: int) -> Sample:
    async with (
        await conat.connect(serve_url, name="bench-responder") as server,
        await conat.connect(call_url, name="bench-requester") as caller,
    ):
        sub = await server.subscribe(
            "bench.cluster.echo", dispatch=lambda m: m.respond_nowait(m.raw), cluster_wide=True
        )
        payload = b"x" * SIZE
        for _ in range(WARMUP):
            await caller.request("bench.cluster.echo", payload, encoding="raw")
        latencies: list[float] = []
        stamp = Stamp()
        for _ in range(count):
            t0 = time.perf_counter()
            await caller.request("bench.cluster.echo", payload, encoding="raw")
            latencies.append(time.perf_counter() - t0)
        elapsed, cpu = Stamp().since(stamp)
        await sub.unsubscribe()
    latencies.sort()
    return Sample(
        count / elapsed,
        {"p50_us": percentile(latencies, 0.5) * 1e6, "p99_us": percentile(latencies, 0.99) * 1e6,
         CPU_KEY: cpu * 1e6 / count},
        count, elapsed,
    )  # fmt: skip


async def _three_nodes(_url: str, count: int) -> Sample:
    with tempfile.TemporaryDirectory(prefix="conat-bench-cluster-") as tmp:
        async with LocalCluster(Path(tmp), 3) as cluster:
            u = cluster.urls
            return await _serial_requests([u[0], u[1]], [u[2], u[1]], count)


async def _one_node(url: str, count: int) -> Sample:
    return await _serial_requests(url, url, count)


def cluster_benches() -> list[Bench]:
    """The 1-vs-3-nodes rows (the report's "1 vs 3 nodes" section reads them)."""
    return [
        Bench("cluster_req", "request/reply across a 3-node loopback cluster (responder on node 0, "
              "requester on node 2) vs one node", _three_nodes, _one_node,
              (Metric("cluster_req", "req/s", 0.5),
               Metric("cluster_req_p50", "us", 2.0, "p50_us", higher_is_better=False),
               Metric("cluster_req_p99", "us", 2.0, "p99_us", higher_is_better=False)),
              3_000, 300, {"size": SIZE, "nodes": 3}, baseline="1 node"),
    ]  # fmt: skip
