"""The figures issues 10, 11 and 12 added, on a crafted run that measured all of them
(tests/bench_runs.py: round numbers, worked out by hand here): the notes, the report's
arithmetic and v2 sections with real values, and bench.json keeping every new figure.

The stored run of tests/data predates them: test_bench_report.py checks it renders them as
"not measured".
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from resnet_mar.bench.notes import (
    busiest_other,
    notes,
    preprocessing_share,
    share_of_peak,
    thread_scaling,
)
from resnet_mar.bench.report import render
from resnet_mar.bench.results import Results, ServedModel, ServedPoint
from resnet_mar.bench.targets import headline
from tests.bench_runs import EVERY_FORMAT, IDLE, limit, load, model, run

DATA = Path(__file__).parent / "data"


@pytest.fixture
def measured() -> Results:
    """Every format served; TorchScript's one-thread limit 62.5 img/s (scaling 0.80)."""
    resnet18 = model()
    resnet18.in_process["torchscript"] = limit(100.0, one_thread=62.5)
    return run({"resnet18": resnet18}, EVERY_FORMAT)


def test_the_new_notes(measured: Results) -> None:
    found = notes(measured)
    for expected in [
        "resnet18: torchscript limit 100.0 img/s x 2.00 GFLOP = 200 GFLOP/s, 0.50 of the FP32 "
        "matmul peak",
        "resnet18: int8 limit 250.0 img/s x 2.00 GFLOP = 500 GFLOP/s, 1.25 of the FP32 matmul "
        "peak (int8 arithmetic is not bounded by the FP32 peak)",
        "resnet18: torchscript limit on one thread 62.5 img/s, on 2 threads 100.0 (batch 8, "
        "contiguous): thread scaling 0.80",
        "resnet18: int8 limit on one thread 125.0 img/s, on 2 threads 250.0 (batch 8, "
        "contiguous): thread scaling 1.00",
        # 2 ms of preprocessing against 2 cores / 250 img/s = 8 ms of int8 inference per image
        "resnet18: at int8 speed exact preprocessing is 20% of the CPU per image (2.00 ms per "
        "photo, int8 inference 8.00 ms = cores / limit)",
        "resnet18: v2 /infer / /predictions at c16 (TorchScript) = 0.90 (81.0 vs 90.0 req/s; "
        "p50 200 vs 50 ms, p99 200 vs 50 ms; 0 errors)",
        "FP32 matmul peak: 400.0 GFLOP/s (4096 x 4096 float32 torch.mm on 2 threads, best of 5 "
        "calls)",
    ]:
        assert expected in found
    # one note per format and figure: peak share and scaling for each of the four formats
    assert sum("of the FP32 matmul peak" in n for n in found) == 4
    assert sum("thread scaling" in n for n in found) == 4


def test_the_arithmetic_behind_the_notes() -> None:
    assert preprocessing_share(2.0, 250.0, 2) == pytest.approx(0.2)
    assert preprocessing_share(1.93, 131.2, 2) == pytest.approx(1.93 / (1.93 + 15.244), abs=1e-4)
    assert share_of_peak(250.0, 2.0, 400.0) == 1.25
    assert thread_scaling(limit(100.0, one_thread=62.5)) == 0.8
    assert thread_scaling(limit(100.0)) is None  # not measured


def test_the_peak_counts_in_the_other_load(measured: Results) -> None:
    assert busiest_other(measured) == 0.03  # the peak's; every other measurement was idle


def test_the_report_renders_the_new_sections_with_values(measured: Results) -> None:
    report = render(measured).splitlines()
    for line in [
        "FP32 matmul peak of this machine: 400.0 GFLOP/s (4096 x 4096 float32 `torch.mm` on 2 "
        "threads, the best of 5 calls after a warm-up, measured right before the limits; other "
        "load 0.03 cores).",
        "| resnet18 | torchscript | 2.00 | 100.0 | 200 | 0.50 | 62.5 | 0.80 |",
        "| resnet18 | openvino | 2.00 | 100.0 | 200 | 0.50 | 50.0 | 1.00 |",
        "| resnet18 | int8 | 2.00 | 250.0 | 500 | 1.25 | 125.0 | 1.00 |",
        "| resnet18 | `PUT /predictions/<m>`, raw JPEG | 90.0 | 50 | 50 | 0 |  |",
        "| resnet18 | `POST /v2/models/<m>/infer`, JSON, base64 | 81.0 | 200 | 200 | 0 | 0.90 |",
        "| resnet18 | ours-torchscript-v2 | 16 | 81.0 | 200 | 200 | 200 | 0 | 810 | 0.00 |",
        "| served int8 c16 / in-process limit (torchscript) | resnet18 | 2.150 | >= 1.8 | PASS |",
    ]:
        assert line in report
    gate = next(line for line in report if line.startswith("The int8 models are built"))
    assert "top-1 agreement with FP32 >= 0.6 and top-1 probability error <= 0.5" in gate
    assert "(0.8 and 0.05)" in gate  # the defaults for trained weights


def test_without_int8_no_gate_is_reported(measured: Results) -> None:
    measured.settings = replace(measured.settings, formats=("torchscript",), int8_gate=None)
    assert "The int8 models are built" not in render(measured)


def test_bench_json_keeps_every_new_figure(measured: Results) -> None:
    document = json.loads(json.dumps(measured.to_json(headline(measured))))
    assert document["fp32_peak"] == {
        "gflop_per_s": 400.0,
        "size": 4096,
        "threads": 2,
        "calls": 5,
        "other_cores": 0.03,
        "steal_cores": 0.0,
    }
    assert document["settings"]["int8_gate"] == {"min_agreement": 0.6, "max_error": 0.5}
    resnet18 = document["models"]["resnet18"]
    assert resnet18["gflop_per_image"] == 2.0
    assert resnet18["in_process"]["int8"]["one_thread_img_per_s"] == 125.0
    assert Results.from_json(document) == measured


def test_a_stored_run_from_before_reads_them_as_not_measured() -> None:
    """bench_results_before_issue12.json: the run of 2026-11-22, written before the peak, the
    GFLOP, the one-thread limits and the v2 point were measured."""
    before = DATA / "bench_results_before_issue12.json"
    stored = Results.from_json(json.loads(before.read_text()))
    assert stored.fp32_peak is None and stored.settings.int8_gate is None
    for model_results in stored.models.values():
        assert model_results.gflop_per_image is None
        assert all(lim.one_thread_img_per_s is None for lim in model_results.in_process.values())
    report = render(stored)
    assert "FP32 matmul peak of this machine: not measured." in report
    assert (
        "| resnet18 | torchscript | not measured | 131.2 | not measured | not measured "
        "| not measured | not measured |"
    ) in report
    assert (
        "| resnet50 | `POST /v2/models/<m>/infer`, JSON, base64 | not measured | not measured "
        "| not measured | not measured | not measured |"
    ) in report


def test_v2_against_a_predictions_point_without_answers(measured: Results) -> None:
    """Only errors at 16 clients over /predictions: no ratio (rather than a division by zero)."""
    resnet18 = measured.models["resnet18"]
    resnet18.served["ours-torchscript"] = ServedModel(
        20.0, (ServedPoint(load(16, 0.0, errors=5), IDLE),)
    )
    assert not any(" v2 /infer " in n for n in notes(measured))
    report = render(measured).splitlines()
    v2_row = next(line for line in report if "`POST /v2/models/<m>/infer`" in line)
    assert v2_row.endswith("| 81.0 | 200 | 200 | 0 | not measured |")
