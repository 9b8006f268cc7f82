"""Re-check every invariant of an output folder (docs/contracts.md sections 2-3).

    python -m pipeline.validate OUT [--max-problems 20]

Exit 0 when the folder is a finished, consistent output; 1 with the first problems listed.
The checks are in ``schemas/validation.py``.
"""

from __future__ import annotations

import argparse
import sys

from schemas.validation import validate_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.validate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("output", metavar="OUT", help="output folder written by pipeline.run")
    parser.add_argument(
        "--max-problems", type=int, default=20, help="problems to list (default 20)"
    )
    args = parser.parse_args(argv)
    problems = validate_output(args.output, args.max_problems)
    if problems.total:
        print(f"{args.output}: {problems.total} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"{args.output}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
