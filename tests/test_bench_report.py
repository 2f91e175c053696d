"""The benchmark's outputs from a stored run: report.md and the printed summary, byte for byte,
and bench.json read back into the results without losing a figure.

tests/data/bench_results.json holds the figures of the run in
docs/benchmark/report-2026-12-03-evening.md (the last full ``make bench``, its stored headline
checked again by today's targets); bench_report.md and bench_summary.txt are what it must
render. A deliberate change to the report's text changes these files in the same commit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from resnet_mar.bench import headline
from resnet_mar.bench.report import render, summary
from resnet_mar.bench.results import Results, from_dict

DATA = Path(__file__).parent / "data"


@pytest.fixture
def stored_run() -> Results:
    return from_dict(Results, json.loads((DATA / "bench_results.json").read_text()))


def test_report_of_a_stored_run(stored_run: Results) -> None:
    assert render(stored_run) == (DATA / "bench_report.md").read_text()


def test_summary_printed_at_the_end_of_a_run(stored_run: Results) -> None:
    printed = "\n".join(summary(stored_run)) + "\n"
    assert printed == (DATA / "bench_summary.txt").read_text()


def test_bench_json_reads_back_and_writes_the_same_bytes(stored_run: Results) -> None:
    """Every figure survives the dataclasses, and the headline checked again from them is the
    one the file stored."""
    text = (DATA / "bench_results.json").read_text()
    assert json.dumps(asdict(stored_run), indent=2) + "\n" == text
    assert headline.rows(stored_run) == stored_run.headline


def test_the_stored_headline_is_not_trusted(stored_run: Results) -> None:
    """Reading a bench.json checks its targets again: a stored verdict cannot pass a figure."""
    data = json.loads((DATA / "bench_results.json").read_text())
    for row in data["headline"]:
        row["passed"] = True
    tampered = from_dict(Results, data)
    assert all(row.passed for row in tampered.headline)
    assert headline.rows(tampered) == headline.rows(stored_run)
    assert render(tampered) == render(stored_run)


def test_a_bound_not_measured_beside_says_so(stored_run: Results) -> None:
    """Runs from before the bound was measured beside the headline point: the limit table says
    so, no note claims it, and the headline keeps the limit and the bound from the start."""
    served = stored_run.models["resnet18"].served
    served["ours-onnx"] = replace(served["ours-onnx"], bound_beside=None)
    report = render(stored_run).splitlines()
    assert (
        "| resnet18 | onnx | 132.7 | batch 16, contiguous | 8.6 | 0.00 | not measured "
        "| not measured |" in report
    )
    assert not any(line.startswith("- resnet18: onnx bound measured right") for line in report)
    assert any(line.startswith("- resnet18: torchscript bound measured right") for line in report)
    # 96.0 req/s against the start's 132.7 img/s, and its bound 116.1
    onnx = [r for r in headline.rows(stored_run) if r.model == "resnet18" and "(onnx)" in r.check]
    assert [r.value for r in onnx if "in-process limit" in r.check] == [0.723, 0.827]
