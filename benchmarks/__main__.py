"""`python -m benchmarks [SUITE ...]` (`make bench`): run the suites, write results/<suite>.json."""

from __future__ import annotations

import argparse
import importlib

SUITES = ("sampling", "vocab", "trainer", "strategies", "trigger_power", "inference", "follow", "scale")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    suites = parser.parse_args().suites or SUITES
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suites {unknown}; choose from {', '.join(SUITES)}")
    for suite in suites:
        importlib.import_module(f"benchmarks.{suite}").run()


if __name__ == "__main__":
    main()
