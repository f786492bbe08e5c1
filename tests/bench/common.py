"""What the benchmarks share: running by hand and printing one result."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def cli(
    doc: str | None, run: Callable[[int, int], dict[str, Any]], pairs: int, repeat: int
) -> None:
    """Parse ``--json --pairs --repeat``, run, print one JSON object or a table."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pairs", type=int, default=pairs)
    parser.add_argument("--repeat", type=int, default=repeat)
    args = parser.parse_args()
    result = run(args.pairs, args.repeat)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
