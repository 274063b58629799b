"""benchmarks/suite_times.py sums a JUnit report per test file, classes and parametrised tests included."""

import subprocess
import sys

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.unit.test_a" name="test_one" time="1.5"/>
<testcase classname="tests.unit.test_a" name="test_two[x]" time="0.5"/>
<testcase classname="tests.workflow.test_b.TestGroup" name="test_three" time="4.0"/>
<testcase classname="tests.workflow.test_b" name="test_four" time="2.0"><skipped message="no"/></testcase>
</testsuite></testsuites>"""


def test_seconds_and_tests_per_file_slowest_first(repo_root, tmp_path):
    report = tmp_path / "suite.xml"
    report.write_text(JUNIT)
    script = repo_root / "benchmarks" / "suite_times.py"
    result = subprocess.run([sys.executable, str(script), str(report)], capture_output=True, text=True, check=True)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `")]
    assert rows == ["| `tests/workflow/test_b.py` | 2 | 6 |", "| `tests/unit/test_a.py` | 2 | 2 |"]
    assert result.stdout.rstrip().endswith("| all | 4 | 8 |")
