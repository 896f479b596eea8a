"""Load benchmark of a live `agelens serve`: throughput, latency, errors and memory under load.

    python benchmarks/bench_service.py              # 1, 8, 32 clients; 5,000 soak requests
    python benchmarks/bench_service.py --requests-per-level 150 --json out.json

It starts `agelens serve` on a free loopback port as a subprocess (rate limit off, other
settings from `--server-env KEY=VALUE` or the inherited AGELENS_* environment), waits for
/ready, and posts the sample photos (multipart field `image`, /v1/analyze) from concurrent
httpx.AsyncClient workers. Phases, in order:

1. Library baseline (before): `agelens.Analyzer().analyze(bytes)` on the same bytes in the same
   order, sequentially in this process, with the server's models and thread setting. Run before
   the server starts and again after it stops; the ratios use the mean of the two.
2. Warm-up: `--warmup` requests (default 200), then the server's VmRSS (from /proc/<pid>/status).
3. Soak: `--requests` more requests (default 5,000) at `--rss-concurrency` clients, sampling
   VmRSS every 500; growth = (after - after-warm-up) / after-warm-up. PASS under `--max-growth`
   (default 10%).
4. Levels: for each `--concurrency` (default 1 8 32), `--requests-per-level` requests (default
   150) or `--duration-per-level` seconds: requests/s, images/s, p50/p95/p99 latency of the
   successful requests, errors by HTTP status and error code (503 `overloaded` apart), and
   service images/s / library images/s.
5. Overload: `--overload` uploads (default 256) started at once, each on its own connection
   (raw sockets: the body is written whole while the answer is read as soon as it comes, as
   curl does; httpx would read it only after sending the whole body): time from connecting to
   the status line of the 503 `overloaded` answers (p50/p95/max; PASS when p95 <
   `--max-503-p95-ms`, default 100) and of the admitted ones (all must get 200), anything else,
   and the server's RSS and peak RSS (VmHWM) after it; then the same burst against a bare
   asyncio server that answers 503 at once (a subprocess), as this machine's floor: on a
   shared, loaded machine the client and the scheduler cost more than the server's door.

`--overload-only` runs the overload phase alone (after `--warmup` requests, no library baseline,
soak or levels):

    python benchmarks/bench_service.py --overload-only --warmup 50 --json overload.json

The client runs on the same machine and takes CPU from the server: the ratios include that
cost, as they include HTTP, multipart parsing, decoding on the server and micro-batching.
Progress goes to the log (stderr); the report goes to stdout; `--json` writes every figure.

Never part of the unit tests. Exits 0 with a message when the samples folder is absent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np

logger = logging.getLogger("bench_service")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
SAMPLE_SUFFIXES = frozenset({".jpg", ".jpeg"})
RSS_SAMPLE_EVERY = 500


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    data: bytes


@dataclass(slots=True)
class RunStats:
    """Outcome of one batch of requests against the server."""

    label: str
    concurrency: int
    wall_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # successful requests only
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503 overloaded", ...
    faces: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def overloaded(self) -> int:
        return sum(n for key, n in self.statuses.items() if key.startswith("503 overloaded"))

    @property
    def errors(self) -> dict[str, int]:
        return {key: n for key, n in sorted(self.statuses.items()) if key != "200"}

    def summary(self, library_images_per_second: float | None) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms, dtype=np.float64)

        def pct(q: float) -> float | None:
            return float(np.percentile(lat, q)) if lat.size else None

        wall = max(self.wall_seconds, 1e-9)
        images_per_second = self.ok / wall
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.ok,
            "wall_seconds": self.wall_seconds,
            "requests_per_second": self.requests / wall,
            "images_per_second": images_per_second,
            "latency_ms": {
                "p50": pct(50),
                "p95": pct(95),
                "p99": pct(99),
                "mean": float(lat.mean()) if lat.size else None,
                "max": float(lat.max()) if lat.size else None,
            },
            "overloaded_503": self.overloaded,
            "errors": self.errors,
            "faces": self.faces,
            "ratio_vs_library": (
                images_per_second / library_images_per_second if library_images_per_second else None
            ),
        }


# ---------------------------------------------------------------------- server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def agelens_command() -> list[str]:
    """The `agelens` console script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).with_name("agelens")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("agelens")
    if found is None:
        raise SystemExit("the `agelens` command is not installed (pip install -e '.[server]')")
    return [found]


def server_environment(overrides: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["AGELENS_RATE_LIMIT_PER_MINUTE"] = "0"
    env.pop("AGELENS_PORT", None)
    env["AGELENS_HOST"] = "127.0.0.1"
    env.update(overrides)
    return env


def read_rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of a process, from /proc/<pid>/status."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


class Server:
    """`agelens serve` as a subprocess on a free port; its log goes to ours (stderr)."""

    def __init__(self, env: dict[str, str], log_level: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [
            *agelens_command(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            log_level,
        ]
        logger.info("starting %s", " ".join(command))
        self.process = subprocess.Popen(command, env=env, stdout=sys.stderr, stderr=sys.stderr)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise SystemExit(f"the server exited with code {code} before it was ready")
                with contextlib.suppress(httpx.TransportError):
                    response = client.get("/ready")
                    if response.status_code == 200:
                        ready: dict[str, Any] = response.json()
                        return ready
                time.sleep(0.25)
        raise SystemExit(f"the server was not ready within {timeout:g} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---------------------------------------------------------------------- load generation


async def drive(
    base_url: str,
    samples: Sequence[Sample],
    *,
    label: str,
    concurrency: int,
    requests: int | None,
    duration: float | None,
    start_index: int = 0,
    on_progress: Any = None,
) -> RunStats:
    """`concurrency` clients posting samples in turn until `requests` are done (or `duration`
    seconds have passed, when given)."""
    stats = RunStats(label=label, concurrency=concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    next_index = start_index
    issued = 0
    deadline: float | None = None

    def claim() -> int | None:
        nonlocal next_index, issued
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        if requests is not None and issued >= requests:
            return None
        index = next_index
        next_index += 1
        issued += 1
        return index

    async with httpx.AsyncClient(base_url=base_url, timeout=120.0, limits=limits) as client:

        async def worker() -> None:
            while (index := claim()) is not None:
                sample = samples[index % len(samples)]
                files = {"image": (sample.name, sample.data, "image/jpeg")}
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/analyze", files=files)
                except httpx.TransportError as error:
                    stats.statuses[f"transport {type(error).__name__}"] += 1
                    continue
                elapsed_ms = (time.perf_counter() - start) * 1000
                if response.status_code == 200:
                    stats.statuses["200"] += 1
                    stats.latencies_ms.append(elapsed_ms)
                    stats.faces += len(response.json().get("faces", []))
                else:
                    try:
                        code = str(response.json()["error"]["code"])
                    except (ValueError, KeyError, TypeError):
                        code = "?"
                    stats.statuses[f"{response.status_code} {code}"] += 1
                if on_progress is not None:
                    on_progress(stats.requests)

        start = time.perf_counter()
        if duration is not None:
            deadline = start + duration
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        stats.wall_seconds = time.perf_counter() - start
    return stats


def run_load(base_url: str, samples: Sequence[Sample], **kwargs: Any) -> RunStats:
    return asyncio.run(drive(base_url, samples, **kwargs))


def _multipart(sample: Sample, boundary: str) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="{sample.name}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    return head + sample.data + f"\r\n--{boundary}--\r\n".encode()


async def _raw_upload(
    host: str, port: int, body: bytes, boundary: str
) -> tuple[int, dict[str, str], bytes, float]:
    """One POST /v1/analyze on its own connection, written whole without waiting, while the
    answer is read as soon as it comes (as curl does; httpx reads only after sending all):
    (status, headers, body, milliseconds to the status line)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"POST /v1/analyze HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    try:
        status_line = await reader.readline()
        first_ms = (time.perf_counter() - start) * 1000
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        payload = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return int(status_line.split()[1]), headers, payload, first_ms


async def overload_burst(base_url: str, samples: Sequence[Sample], uploads: int) -> dict[str, Any]:
    """`uploads` multipart uploads started at once, each on its own connection: the time to
    each answer's status line by kind (503 `overloaded`, 200, anything else)."""
    url = httpx.URL(base_url)
    host, port = str(url.host), int(url.port or 80)
    boundary = "agelens-bench-boundary"
    bodies = [_multipart(sample, boundary) for sample in samples]
    refused_ms: list[float] = []
    admitted_ms: list[float] = []
    other: Counter[str] = Counter()
    retry_after: Counter[str] = Counter()
    gate = asyncio.Event()

    async def one(index: int) -> None:
        await gate.wait()
        try:
            status, headers, payload, first_ms = await _raw_upload(
                host, port, bodies[index % len(bodies)], boundary
            )
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
            other[f"transport {type(error).__name__}"] += 1
            return
        if status == 200:
            admitted_ms.append(first_ms)
            return
        try:
            code = str(json.loads(payload)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            code = "?"
        if status == 503 and code == "overloaded":
            refused_ms.append(first_ms)
            retry_after[headers.get("retry-after", "(none)")] += 1
        else:
            other[f"{status} {code}"] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(uploads)]
    await asyncio.sleep(0.05)  # every task is waiting at the gate
    start = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start

    def spread(values: list[float]) -> dict[str, float | None]:
        array = np.asarray(values, dtype=np.float64)
        if not array.size:
            return {"p50": None, "p95": None, "max": None}
        return {
            "p50": float(np.percentile(array, 50)),
            "p95": float(np.percentile(array, 95)),
            "max": float(array.max()),
        }

    return {
        "uploads": uploads,
        "wall_seconds": wall,
        "refused_503": len(refused_ms),
        "refused_latency_ms": spread(refused_ms),
        "retry_after": dict(retry_after),
        "admitted_200": len(admitted_ms),
        "admitted_latency_ms": spread(admitted_ms),
        "other": dict(other),
    }


async def _serve_floor(port: int) -> None:
    """The least a server can do: answer 503 to each request as soon as its headers are in,
    then read and drop the body. Run as its own process to measure this machine's floor."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            body = b'{"error": {"code": "overloaded", "message": "floor"}}'
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def measure_floor(samples: Sequence[Sample], uploads: int) -> dict[str, Any]:
    """The same burst against `_serve_floor` in a subprocess: what this machine (its load,
    the client) costs before any server logic."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-floor", str(port)], stdout=sys.stderr
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the floor server did not start")
            time.sleep(0.05)
        return asyncio.run(overload_burst(f"http://127.0.0.1:{port}", samples, uploads))
    finally:
        process.terminate()
        process.wait(timeout=10)


def overload_report(figures: dict[str, Any]) -> str:
    """The overload phase as lines of text."""
    row = figures["overload"]
    refused, admitted = row["refused_latency_ms"], row["admitted_latency_ms"]
    floor = row["floor"]["refused_latency_ms"]
    other = ", ".join(f"{k}: {v}" for k, v in row["other"].items()) or "none"
    return "\n".join(
        [
            f"overload: {row['uploads']} uploads at once, {row['wall_seconds']:.1f} s in all",
            f"  503 overloaded: {row['refused_503']}, latency p50 {fmt(refused['p50'])} ms, "
            f"p95 {fmt(refused['p95'])} ms, max {fmt(refused['max'])} ms "
            f"(limit p95 < {row['max_503_p95_ms']:g} ms) -> {row['verdict']}; "
            f"Retry-After {row['retry_after']}",
            f"  200 admitted: {row['admitted_200']}, latency p50 {fmt(admitted['p50'])} ms, "
            f"p95 {fmt(admitted['p95'])} ms, max {fmt(admitted['max'])} ms",
            f"  anything else: {other}",
            f"  this machine's floor (a bare asyncio server answering 503 at once, same "
            f"client): p50 {fmt(floor['p50'])} ms, p95 {fmt(floor['p95'])} ms, "
            f"max {fmt(floor['max'])} ms",
            f"  server RSS after: {row['rss_after_kib'] / 1024:.1f} MiB, peak VmHWM "
            f"{row['hwm_kib'] / 1024:.1f} MiB",
        ]
    )


def run_overload(
    server: Server, samples: Sequence[Sample], uploads: int, max_503_p95_ms: float
) -> dict[str, Any]:
    """The overload phase against a running server, with its verdict and RSS."""
    logger.info("overload: %d uploads at once", uploads)
    row = asyncio.run(overload_burst(server.base_url, samples, uploads))
    memory = read_rss_kib(server.pid)
    logger.info("overload floor: %d uploads at once against a bare asyncio server", uploads)
    row["floor"] = measure_floor(samples, uploads)
    p95 = row["refused_latency_ms"]["p95"]
    passed = p95 is not None and p95 < max_503_p95_ms and not row["other"]
    row.update(
        {
            "max_503_p95_ms": max_503_p95_ms,
            "verdict": "PASS" if passed else "FAIL",
            "rss_after_kib": memory["VmRSS"],
            "hwm_kib": memory["VmHWM"],
        }
    )
    return row


# ---------------------------------------------------------------------- library baseline


def library_baseline(
    samples: Sequence[Sample], requests: int, detector: str, estimator: str, threads: int | None
) -> dict[str, Any]:
    """Sequential in-process `Analyzer.analyze(bytes)` on the same bytes, same order."""
    from agelens.pipeline import Analyzer

    analyzer = Analyzer(detector, estimator, threads=threads)
    for sample in samples:  # warm-up, not timed
        analyzer.analyze(sample.data)
    faces = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    for index in range(requests):
        faces += len(analyzer.analyze(samples[index % len(samples)].data).faces)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    del analyzer
    return {
        "images": requests,
        "wall_seconds": wall,
        "images_per_second": requests / wall,
        "cpu_over_wall": cpu / wall,
        "faces": faces,
    }


# ---------------------------------------------------------------------- report


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(figures: dict[str, Any]) -> str:
    lines: list[str] = []
    cfg = figures["config"]
    lib = figures["library"]
    lines.append(
        f"agelens serve: detector {cfg['detector']}, estimator {cfg['estimator']}, threads "
        f"{cfg['threads'] or 'default'}, server env {cfg['server_env'] or '{}'}"
    )
    lines.append(
        f"samples: {cfg['samples']} photos from {cfg['samples_dir']}; {cfg['cpu_count']} CPUs"
    )
    lines.append(
        "library baseline (Analyzer.analyze(bytes), sequential, in-process): "
        f"{lib['before']['images_per_second']:.2f} img/s before, "
        f"{lib['after']['images_per_second']:.2f} img/s after, "
        f"mean {lib['images_per_second']:.2f} img/s"
    )
    lines.append("")
    header = (
        "| phase | clients | requests | req/s | img/s | p50 ms | p95 ms | p99 ms | "
        "503 overloaded | other errors | service / library |"
    )
    lines.append(header)
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in [*figures["levels"], figures["soak"]]:
        other = {k: v for k, v in row["errors"].items() if not k.startswith("503 overloaded")}
        other_text = ", ".join(f"{k}: {v}" for k, v in other.items()) or "0"
        lat = row["latency_ms"]
        lines.append(
            f"| {row['label']} | {row['concurrency']} | {row['requests']} | "
            f"{row['requests_per_second']:.2f} | {row['images_per_second']:.2f} | "
            f"{fmt(lat['p50'])} | {fmt(lat['p95'])} | {fmt(lat['p99'])} | "
            f"{row['overloaded_503']} | {other_text} | {fmt(row['ratio_vs_library'], '.2f')}x |"
        )
    rss = figures["rss"]
    lines.append("")
    lines.append(
        f"server RSS: {rss['before_kib'] / 1024:.1f} MiB after {rss['warmup_requests']} warm-up "
        f"requests, {rss['after_kib'] / 1024:.1f} MiB after {rss['requests']} more "
        f"(peak VmHWM {rss['hwm_kib'] / 1024:.1f} MiB): growth {rss['growth_percent']:+.2f}% "
        f"(limit {rss['max_growth_percent']:g}%) -> {rss['verdict']}"
    )
    trail = ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in rss["samples"])
    lines.append(f"RSS MiB by requests after warm-up: {trail}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def parse_env_pairs(pairs: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--server-env takes KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["--serve-floor"]:
        asyncio.run(_serve_floor(int(arguments[1])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-dir", type=Path, default=DATA_ROOT / "samples")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    per_level = parser.add_mutually_exclusive_group()
    per_level.add_argument("--requests-per-level", type=int, default=150)
    per_level.add_argument("--duration-per-level", type=float, default=None, help="seconds")
    parser.add_argument(
        "--requests", type=int, default=5000, help="requests after warm-up for the RSS check"
    )
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up requests")
    parser.add_argument("--rss-concurrency", type=int, default=8, help="clients during the soak")
    parser.add_argument("--max-growth", type=float, default=10.0, help="RSS growth limit, %%")
    parser.add_argument(
        "--library-requests",
        type=int,
        default=None,
        help="images per library baseline run (default: --requests-per-level, at least 50)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the server, e.g. AGELENS_QUEUE_SIZE=128 (repeatable)",
    )
    parser.add_argument(
        "--overload", type=int, default=256, help="uploads started at once (0 = skip)"
    )
    parser.add_argument("--max-503-p95-ms", type=float, default=100.0)
    parser.add_argument(
        "--overload-only", action="store_true", help="warm up, then the overload phase alone"
    )
    parser.add_argument("--server-log-level", default="warning")
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    if min(args.concurrency) < 1 or args.rss_concurrency < 1 or args.requests < 1:
        parser.error("--concurrency, --rss-concurrency and --requests must be >= 1")
    if args.duration_per_level is None and args.requests_per_level < 1:
        parser.error("--requests-per-level must be >= 1")

    if not args.samples_dir.is_dir():
        print(f"samples folder {args.samples_dir} is absent: nothing to benchmark")
        return 0
    samples = [
        Sample(path.name, path.read_bytes())
        for path in sorted(args.samples_dir.iterdir())
        if path.is_file() and path.suffix.lower() in SAMPLE_SUFFIXES
    ]
    if not samples:
        print(f"no .jpg photo in {args.samples_dir}: nothing to benchmark")
        return 0

    overrides = parse_env_pairs(args.server_env, parser)
    env = server_environment(overrides)
    # The library baseline uses the server's models and thread setting.
    from agelens.server.settings import Settings

    settings = Settings(
        **cast(
            dict[str, Any],
            {
                key.removeprefix("AGELENS_").lower(): value
                for key, value in env.items()
                if key.startswith("AGELENS_")
                and key.removeprefix("AGELENS_").lower() in Settings.model_fields
            },
        )
    )
    if args.overload_only:
        return overload_only(args, env, overrides, settings, samples)
    library_requests = args.library_requests or max(50, args.requests_per_level)
    lib_args = (samples, library_requests, settings.detector, settings.estimator, settings.threads)

    logger.info("library baseline (before): %d images", library_requests)
    lib_before = library_baseline(*lib_args)
    logger.info("library: %.2f img/s", lib_before["images_per_second"])

    server = Server(env, args.server_log_level)
    try:
        ready = server.wait_ready(args.ready_timeout)
        logger.info("server ready on port %d (pid %d): %s", server.port, server.pid, ready)

        logger.info("warm-up: %d requests", args.warmup)
        warm = run_load(
            server.base_url,
            samples,
            label="warm-up",
            concurrency=args.rss_concurrency,
            requests=args.warmup,
            duration=None,
        )
        rss_before = read_rss_kib(server.pid)["VmRSS"]
        rss_trail: list[tuple[int, int]] = [(0, rss_before)]
        logger.info("RSS after warm-up: %.1f MiB", rss_before / 1024)

        def sample_rss(done: int) -> None:
            if done % RSS_SAMPLE_EVERY == 0:
                kib = read_rss_kib(server.pid)["VmRSS"]
                rss_trail.append((done, kib))
                logger.info("soak: %d/%d requests, RSS %.1f MiB", done, args.requests, kib / 1024)

        logger.info("soak: %d requests at %d clients", args.requests, args.rss_concurrency)
        soak = run_load(
            server.base_url,
            samples,
            label="soak (RSS)",
            concurrency=args.rss_concurrency,
            requests=args.requests,
            duration=None,
            start_index=args.warmup,
            on_progress=sample_rss,
        )
        after = read_rss_kib(server.pid)
        rss_after = after["VmRSS"]
        if not rss_trail or rss_trail[-1][0] != soak.requests:
            rss_trail.append((soak.requests, rss_after))
        logger.info("RSS after soak: %.1f MiB", rss_after / 1024)

        levels: list[RunStats] = []
        for concurrency in args.concurrency:
            logger.info(
                "level: %d clients, %s",
                concurrency,
                f"{args.duration_per_level:g} s"
                if args.duration_per_level is not None
                else f"{args.requests_per_level} requests",
            )
            stats = run_load(
                server.base_url,
                samples,
                label=f"{concurrency} client{'s' if concurrency > 1 else ''}",
                concurrency=concurrency,
                requests=None if args.duration_per_level is not None else args.requests_per_level,
                duration=args.duration_per_level,
            )
            logger.info(
                "  %d requests in %.1f s, %d ok, errors %s",
                stats.requests,
                stats.wall_seconds,
                stats.ok,
                stats.errors or "none",
            )
            levels.append(stats)
        overload = (
            run_overload(server, samples, args.overload, args.max_503_p95_ms)
            if args.overload
            else None
        )
    finally:
        server.stop()

    logger.info("library baseline (after): %d images", library_requests)
    lib_after = library_baseline(*lib_args)
    logger.info("library: %.2f img/s", lib_after["images_per_second"])
    lib_mean = (lib_before["images_per_second"] + lib_after["images_per_second"]) / 2

    growth = (rss_after - rss_before) / rss_before * 100
    figures: dict[str, Any] = {
        "config": {
            "detector": settings.detector,
            "estimator": settings.estimator,
            "threads": settings.threads,
            "queue_size": settings.queue_size,
            "batch_window_ms": settings.batch_window_ms,
            "batch_max_images": settings.batch_max_images,
            "inference_workers": settings.inference_workers,
            "server_env": overrides,
            "samples_dir": str(args.samples_dir),
            "samples": len(samples),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "requests_per_level": (
                None if args.duration_per_level is not None else args.requests_per_level
            ),
            "duration_per_level": args.duration_per_level,
            "rss_concurrency": args.rss_concurrency,
        },
        "library": {"before": lib_before, "after": lib_after, "images_per_second": lib_mean},
        "warmup": warm.summary(lib_mean),
        "soak": soak.summary(lib_mean),
        "levels": [stats.summary(lib_mean) for stats in levels],
        "rss": {
            "warmup_requests": warm.requests,
            "requests": soak.requests,
            "before_kib": rss_before,
            "after_kib": rss_after,
            "hwm_kib": after["VmHWM"],
            "growth_percent": growth,
            "max_growth_percent": args.max_growth,
            "verdict": "PASS" if growth < args.max_growth else "FAIL",
            "samples": rss_trail,
        },
    }
    figures["overload"] = overload
    print(report(figures))
    if overload is not None:
        print(overload_report(figures))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        logger.info("figures written to %s", args.json)
    return 0


def overload_only(
    args: argparse.Namespace,
    env: dict[str, str],
    overrides: dict[str, str],
    settings: Any,
    samples: Sequence[Sample],
) -> int:
    """`--overload-only`: start the server, warm it up, run the overload phase, report."""
    server = Server(env, args.server_log_level)
    try:
        server.wait_ready(args.ready_timeout)
        if args.warmup:
            logger.info("warm-up: %d requests", args.warmup)
            run_load(
                server.base_url,
                samples,
                label="warm-up",
                concurrency=args.rss_concurrency,
                requests=args.warmup,
                duration=None,
            )
        overload = run_overload(server, samples, args.overload or 256, args.max_503_p95_ms)
    finally:
        server.stop()
    figures: dict[str, Any] = {
        "config": {
            "detector": settings.detector,
            "estimator": settings.estimator,
            "max_requests_in_flight": settings.max_requests_in_flight,
            "queue_size": settings.queue_size,
            "server_env": overrides,
            "samples_dir": str(args.samples_dir),
            "samples": len(samples),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "overload": overload,
    }
    print(
        f"agelens serve: detector {settings.detector}, estimator {settings.estimator}, "
        f"max_requests_in_flight {settings.max_requests_in_flight}, "
        f"server env {overrides or '{}'}; {len(samples)} sample photos; "
        f"{os.cpu_count()} CPUs"
    )
    print(overload_report(figures))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if overload["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
