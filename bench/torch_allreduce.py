"""PyTorch yardstick for the `allreduce` workload (WORKLOADS.md).

    bench/.venv/bin/python bench/torch_allreduce.py [--mb 64] [--world 2] [--steps 10]

Sum-all-reduce of one float32 buffer of --mb MiB per process across --world
processes on loopback with torch.distributed's gloo backend, measured the
way `adjoint bench allreduce` measures it: two untimed warm-up calls, then
--steps timed calls, each after a barrier; every rank takes its median and
the slowest rank's median is reported. Prints one JSON line:
{"workload": "allreduce", "impl": "pytorch-gloo", "world", "mb", "median_ms",
"gbps", "torch"}, gbps being algorithm bandwidth (bytes per process / time,
in 1e9 bytes per second).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, mb: int, steps: int, results) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    data = torch.empty(mb * (1 << 20) // 4, dtype=torch.float32)
    value = float(rank % 1000 + 1)
    for _ in range(2):
        data.fill_(value)
        dist.all_reduce(data)
    times = []
    for _ in range(max(steps, 1)):
        data.fill_(value)
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(data)
        times.append((time.perf_counter() - start) * 1e3)
    results.put((rank, statistics.median_low(sorted(times))))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64, help="MiB per process")
    ap.add_argument("--world", type=int, default=2, help="processes")
    ap.add_argument("--steps", type=int, default=10, help="timed all-reduces")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=worker, args=(r, args.world, port, args.mb, args.steps, results))
        for r in range(args.world)
    ]
    for p in procs:
        p.start()
    medians = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a worker failed with exit code {p.exitcode}")
    slowest = max(ms for _, ms in medians)
    print(json.dumps({
        "workload": "allreduce",
        "impl": "pytorch-gloo",
        "world": args.world,
        "mb": args.mb,
        "median_ms": round(slowest, 3),
        "gbps": round(args.mb * (1 << 20) / (slowest * 1e-3) / 1e9, 3),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
