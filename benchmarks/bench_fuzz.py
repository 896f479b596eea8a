"""Fuzz run: malformed images (tests/fuzz/malformed.py) through the library and the HTTP API.

    python benchmarks/bench_fuzz.py                       # 10,000 library + 2,000 HTTP inputs
    python benchmarks/bench_fuzz.py --count 20000 --seed 7 --http-count 0 --json fuzz.json

Each input goes through `load_image` and `Analyzer.analyze` (default models), and the first
`--http-count` also through `POST /v1/analyze?return_image=true` of the real app (in-process,
FastAPI's TestClient, same models). Prints, per kind of damage: results, each typed error,
anything else (an untyped exception, an HTTP 5xx, a status outside 200/400/413/422: each is a
failure), the slowest input, and the lines C libraries (libjpeg, libtiff, ...) wrote straight
to stderr (file descriptor 2, captured during the run) rather than through logging. Exits 1
when anything failed. Photos come from ../shared/data/samples (the astronaut alone when absent).

Never part of the unit tests (tests/fuzz/test_fuzz.py runs a few hundred of the same inputs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # tests.fuzz.malformed

from tests.fuzz.malformed import KINDS, Case, load_photos, malformed_images  # noqa: E402

logger = logging.getLogger("bench_fuzz")
ALLOWED_STATUSES = {200, 400, 413, 422}


@contextlib.contextmanager
def stderr_captured() -> Iterator[tuple[Path, TextIO]]:
    """Point file descriptor 2 at a temporary file (what C libraries write there lands in it)
    and yield it with a stream on the original stderr, for our own log."""
    original = os.dup(2)
    console = os.fdopen(os.dup(original), "w", buffering=1)
    with tempfile.NamedTemporaryFile("w+b", suffix=".stderr", delete=False) as capture:
        path = Path(capture.name)
        os.dup2(capture.fileno(), 2)
    try:
        yield path, console
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)
        os.close(original)


def library_run(cases: Sequence[Case]) -> dict[str, Any]:
    """Every case through load_image + Analyzer.analyze."""
    from agelens.errors import AgelensError
    from agelens.imaging import load_image
    from agelens.pipeline import Analyzer

    analyzer = Analyzer()
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    failures: list[dict[str, Any]] = []
    slowest: tuple[float, int, str] = (0.0, -1, "")
    for number, case in enumerate(cases, 1):
        start = time.perf_counter()
        try:
            analyzer.analyze(load_image(case.data, label=f"case {case.index}"))
            outcome = "result"
        except AgelensError as error:
            outcome = type(error).__name__
        except Exception as error:  # the failures this run looks for
            outcome = f"UNTYPED {type(error).__name__}"
            failures.append({"index": case.index, "detail": case.detail, "error": repr(error)})
        elapsed = time.perf_counter() - start
        slowest = max(slowest, (elapsed, case.index, case.detail))
        outcomes[case.kind][outcome] += 1
        if number % 1000 == 0:
            logger.info("library: %d/%d", number, len(cases))
    return {"outcomes": outcomes, "failures": failures, "slowest": slowest}


def http_run(cases: Sequence[Case]) -> dict[str, Any]:
    """Cases through POST /v1/analyze?return_image=true of the real app."""
    from fastapi.testclient import TestClient

    from agelens.server.app import create_app
    from agelens.server.settings import Settings

    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    failures: list[dict[str, Any]] = []
    slowest: tuple[float, int, str] = (0.0, -1, "")
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(rate_limit_per_minute=0, data_dir=Path(data_dir))
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            for number, case in enumerate(cases, 1):
                start = time.perf_counter()
                response = client.post(
                    "/v1/analyze",
                    params={"return_image": "true"},
                    files={"image": (f"case-{case.index}", case.data, "image/jpeg")},
                )
                elapsed = time.perf_counter() - start
                try:
                    code = response.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "result" if response.status_code == 200 else "?"
                outcome = f"{response.status_code} {code}"
                if response.status_code not in ALLOWED_STATUSES:
                    outcome = f"FAILED {outcome}"
                    failures.append({"index": case.index, "detail": case.detail, "status": outcome})
                outcomes[case.kind][outcome] += 1
                slowest = max(slowest, (elapsed, case.index, case.detail))
                if number % 500 == 0:
                    logger.info("http: %d/%d", number, len(cases))
    return {"outcomes": outcomes, "failures": failures, "slowest": slowest}


def table(title: str, run: dict[str, Any]) -> str:
    """Kinds as rows, outcomes as columns (Markdown)."""
    outcomes: dict[str, Counter[str]] = run["outcomes"]
    columns = sorted({name for counts in outcomes.values() for name in counts})
    lines = [
        f"### {title}",
        "",
        "| kind | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    totals: Counter[str] = Counter()
    for kind in KINDS:
        counts = outcomes.get(kind, Counter())
        totals.update(counts)
        lines.append(f"| {kind} | " + " | ".join(str(counts[c]) for c in columns) + " |")
    lines.append("| **all** | " + " | ".join(f"**{totals[c]}**" for c in columns) + " |")
    elapsed, index, detail = run["slowest"]
    lines += [
        "",
        f"failures (untyped errors, HTTP 5xx or other statuses): {len(run['failures'])}",
        f"slowest input: case {index} ({detail}), {elapsed * 1000:.0f} ms",
    ]
    lines += [f"  FAILED case {f['index']}: {f['detail']}: {f}" for f in run["failures"][:20]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="library inputs")
    parser.add_argument("--http-count", type=int, default=2_000, help="HTTP inputs (0 = none)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument(
        "--samples-dir", type=Path, default=REPO_ROOT.parent / "shared/data/samples"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)

    photos = load_photos(args.samples_dir)
    cases = list(malformed_images(args.seed, max(args.count, args.http_count), photos))
    start = time.perf_counter()
    with stderr_captured() as (captured, console):
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=console
        )
        logging.getLogger("agelens").setLevel(logging.ERROR)  # a decode warning per bad input
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logger.info("%d inputs from %d photos, seed %d", len(cases), len(photos), args.seed)
        library = library_run(cases[: args.count])
        http = http_run(cases[: args.http_count]) if args.http_count else None
    wall = time.perf_counter() - start
    raw_lines = captured.read_text(errors="replace").splitlines()
    captured.unlink()
    raw_kinds = Counter(line.split(":")[0][:60] for line in raw_lines)

    print(f"fuzz run: seed {args.seed}, {len(photos)} photos, {wall:.0f} s")
    print()
    print(table(f"library: {args.count} inputs (load_image + Analyzer.analyze)", library))
    if http is not None:
        print()
        print(table(f"HTTP: {args.http_count} inputs (POST /v1/analyze?return_image)", http))
    print()
    print(f"lines written straight to stderr by C libraries: {len(raw_lines)}")
    for text, count in raw_kinds.most_common(10):
        print(f"  {count} x {text}")
    failed = len(library["failures"]) + (len(http["failures"]) if http else 0)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "library": library,
                    "http": http,
                    "stderr_lines": len(raw_lines),
                    "wall_seconds": wall,
                },
                indent=2,
                default=list,
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
