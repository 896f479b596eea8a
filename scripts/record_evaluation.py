"""Record `agelens eval` figures in a trained model's card (card.json and MODEL_CARD.md).

    agelens eval ../shared/data/utkface --split test --pad 0.5 --estimator NAME --out utk.json
    agelens eval ../shared/data/aaf --estimator NAME --out aaf.json
    python scripts/record_evaluation.py src/agelens/trained/NAME utkface-test=utk.json aaf=aaf.json

Each metrics file must come from `agelens eval --out` (it holds the command that produced it).
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import date
from importlib.metadata import version
from pathlib import Path

from agelens.train.cards import record_evaluation

logger = logging.getLogger("record_evaluation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the trained model's folder")
    parser.add_argument("metrics", nargs="+", help="DATASET=metrics.json, from agelens eval --out")
    parser.add_argument("--date", default=date.today().isoformat(), help="when they were measured")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for item in arguments.metrics:
        name, _, path = item.partition("=")
        if not name or not path:
            parser.error(f"expected DATASET=metrics.json, got {item!r}")
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
        record_evaluation(
            arguments.folder, name, metrics, date=arguments.date, version=version("agelens")
        )
        logger.info("%s: %s recorded in %s", name, path, arguments.folder)


if __name__ == "__main__":
    main()
