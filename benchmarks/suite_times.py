"""Seconds per test file of a pytest run, from its JUnit XML report, slowest first.

A session-scoped fixture's setup (the small study, the SLURM cluster) is charged to the first test that needs it, so a
file's time includes the setups it triggers; run the whole suite in its usual order for figures that compare.

    pytest --junitxml=/tmp/suite.xml && python benchmarks/suite_times.py /tmp/suite.xml
"""

import argparse
import xml.etree.ElementTree as ElementTree
from collections import defaultdict


def seconds_per_file(report: str) -> dict[str, tuple[float, int]]:
    """Test file -> (seconds, tests) summed over the report's test cases (setup, call and teardown included)."""
    totals: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        path = case.get("classname", "").split(".")
        # classname is the module path, then a class for tests in classes: keep the part up to the test_ module
        module = next((i for i, part in enumerate(path) if part.startswith("test_")), len(path) - 1)
        name = "/".join(path[: module + 1]) + ".py"
        totals[name][0] += float(case.get("time", 0))
        totals[name][1] += 1
    return {name: (seconds, count) for name, (seconds, count) in totals.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="a JUnit XML file written by pytest --junitxml")
    times = seconds_per_file(parser.parse_args().report)
    print("| test file | tests | seconds |\n|---|---|---|")
    for name, (seconds, count) in sorted(times.items(), key=lambda item: -item[1][0]):
        print(f"| `{name}` | {count} | {seconds:.0f} |")
    print(f"| all | {sum(c for _, c in times.values())} | {sum(s for s, _ in times.values()):.0f} |")


if __name__ == "__main__":
    main()
