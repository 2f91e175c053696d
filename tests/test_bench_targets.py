"""The headline's targets on crafted results: each passes on one side of its threshold and
fails on the other, applies to every model measured, and fails (never vanishes) when the run
did not measure what it needs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from resnet_mar.bench.report import headline_section
from resnet_mar.bench.results import AllBusy, BusyModel, HeadlineRow, ServedModel, ServedPoint
from resnet_mar.bench.targets import COMPARISON_TARGETS, FORMAT_TARGETS, headline
from tests.bench_runs import EVERY_FORMAT, IDLE, load, model, run, served

TS_LIMIT = "served c16 / in-process limit (torchscript)"
ONNX_C1 = "p50 c1 - in-process batch-1 latency, ms (onnx)"
OVER_STOCK = "ours / stock throughput at c16"
OVER_TS = "served onnx / served torchscript at c16"
INT8_PREPROCESSING = "served c16 / in-process limit with exact preprocessing (int8)"
OPENVINO_OVER_TS = "served openvino / served torchscript at c16"
INT8_OVER_TS_LIMIT = "served int8 c16 / in-process limit (torchscript)"


def row(rows: list[HeadlineRow], check: str, model: str = "resnet18") -> HeadlineRow:
    (found,) = [r for r in rows if r.check == check and r.model == model]
    return found


def test_a_run_that_meets_every_target() -> None:
    rows = headline(run({"resnet18": model()}))
    assert [(r.check, r.value, r.target, r.passed) for r in rows] == [
        ("served c16 / in-process limit (torchscript)", 0.9, ">= 0.85", True),
        ("p50 c1 - in-process batch-1 latency, ms (torchscript)", 5.0, "<= 10.0", True),
        ("errors, c <= 64 (torchscript)", 0, "0", True),
        ("served c16 / in-process limit (onnx)", 1.5, ">= 0.85", True),
        ("p50 c1 - in-process batch-1 latency, ms (onnx)", 5.0, "<= 10.0", True),
        ("errors, c <= 64 (onnx)", 0, "0", True),
        ("ours / stock throughput at c16", 4.5, ">= 4.0", True),
        ("served onnx / served torchscript at c16", 1.667, ">= 1.5", True),
    ]


@pytest.mark.parametrize(
    ("figures", "check", "value", "passed"),
    [
        ({"ts_rps": 85.0}, TS_LIMIT, 0.85, True),
        ({"ts_rps": 84.9}, TS_LIMIT, 0.849, False),
        ({"c1_p50_ms": 20.0}, ONNX_C1, 10.0, True),
        ({"c1_p50_ms": 20.01}, ONNX_C1, 10.01, False),
        ({"stock_rps": 22.5}, OVER_STOCK, 4.0, True),
        ({"stock_rps": 22.6}, OVER_STOCK, 3.982, False),
        ({"onnx_rps": 135.0}, OVER_TS, 1.5, True),
        ({"onnx_rps": 134.9}, OVER_TS, 1.499, False),
        # int8's limit with exact preprocessing: 1 / (1/250 + 0.002/2) = 200 img/s
        ({"int8_rps": 170.0}, INT8_PREPROCESSING, 0.85, True),
        ({"int8_rps": 169.8}, INT8_PREPROCESSING, 0.849, False),
        ({"openvino_rps": 90.0}, OPENVINO_OVER_TS, 1.0, True),
        ({"openvino_rps": 89.9}, OPENVINO_OVER_TS, 0.999, False),
        ({"int8_rps": 180.0}, INT8_OVER_TS_LIMIT, 1.8, True),
        ({"int8_rps": 179.9}, INT8_OVER_TS_LIMIT, 1.799, False),
    ],
)
def test_each_target_at_its_threshold(
    figures: dict[str, float], check: str, value: float, passed: bool
) -> None:
    found = row(headline(run({"resnet18": model(**figures)}, EVERY_FORMAT)), check)
    assert (found.value, found.passed) == (value, passed)


def test_a_run_of_every_format_meets_every_target() -> None:
    """Issue 12's targets after issue 4's: int8 against its limit with exact preprocessing
    (int8 rows only), OpenVINO FP32 against served TorchScript, int8 against the FP32
    TorchScript limit; each applies to every model."""
    results = run({"resnet18": model(), "resnet50": model()}, EVERY_FORMAT)
    rows = headline(results)
    assert [(r.check, r.value, r.target, r.passed) for r in rows if r.model == "resnet50"] == [
        ("served c16 / in-process limit (torchscript)", 0.9, ">= 0.85", True),
        ("p50 c1 - in-process batch-1 latency, ms (torchscript)", 5.0, "<= 10.0", True),
        ("errors, c <= 64 (torchscript)", 0, "0", True),
        ("served c16 / in-process limit (onnx)", 1.5, ">= 0.85", True),
        ("p50 c1 - in-process batch-1 latency, ms (onnx)", 5.0, "<= 10.0", True),
        ("errors, c <= 64 (onnx)", 0, "0", True),
        ("served c16 / in-process limit (openvino)", 0.9, ">= 0.85", True),
        ("p50 c1 - in-process batch-1 latency, ms (openvino)", 5.0, "<= 10.0", True),
        ("errors, c <= 64 (openvino)", 0, "0", True),
        ("served c16 / in-process limit (int8)", 0.86, ">= 0.85", True),
        ("p50 c1 - in-process batch-1 latency, ms (int8)", 5.0, "<= 10.0", True),
        ("errors, c <= 64 (int8)", 0, "0", True),
        ("served c16 / in-process limit with exact preprocessing (int8)", 1.075, ">= 0.85", True),
        ("ours / stock throughput at c16", 4.5, ">= 4.0", True),
        ("served onnx / served torchscript at c16", 1.667, ">= 1.5", True),
        ("served openvino / served torchscript at c16", 1.0, ">= 1.0", True),
        ("served int8 c16 / in-process limit (torchscript)", 2.15, ">= 1.8", True),
    ]
    assert [r.model for r in rows] == ["resnet18"] * 17 + ["resnet50"] * 17


def test_issue_12_targets_fail_when_not_measured() -> None:
    """No preprocessing cost, no TorchScript limit: the int8 rows that need them fail, saying
    so; the others still count."""
    broken = model()
    broken.preprocessing_ms = None
    del broken.in_process["torchscript"]
    rows = headline(run({"resnet18": broken}, EVERY_FORMAT))
    for check in (INT8_PREPROCESSING, INT8_OVER_TS_LIMIT, TS_LIMIT):
        assert (row(rows, check).value, row(rows, check).passed) == (None, False)
    assert row(rows, OPENVINO_OVER_TS).passed  # served figures only


def test_errors_at_any_concurrency_or_while_all_busy_fail() -> None:
    at_64 = model()
    at_64.served["ours-onnx"] = served(150.0, errors_at_64=2)
    rows = headline(run({"resnet18": at_64}))
    assert row(rows, "errors, c <= 64 (onnx)") == HeadlineRow(
        "errors, c <= 64 (onnx)", "resnet18", 2, "0", False
    )
    assert row(rows, "errors, c <= 64 (torchscript)").passed

    busy = run({"resnet18": model(), "resnet50": model()})
    busy.all_busy["ours-torchscript"] = AllBusy(
        16,
        {
            "resnet18": BusyModel(load(16, 45.0), 0.5),
            "resnet50": BusyModel(load(16, 40.0, errors=1), 0.44),
        },
        IDLE,
        0.94,
    )
    rows = headline(busy)
    assert row(rows, "errors, c <= 64 (torchscript)", "resnet18").passed
    assert row(rows, "errors, c <= 64 (torchscript)", "resnet50").value == 1
    assert not row(rows, "errors, c <= 64 (torchscript)", "resnet50").passed


def test_every_target_applies_to_every_model_measured() -> None:
    """No model is named in a target: the ONNX/TorchScript ratio is checked for each."""
    names = ["resnet18", "resnet50", "wide_resnet50_2"]
    rows = headline(run({name: model() for name in names}))
    assert len(rows) == 8 * len(names)
    checks = {r.check for r in rows if r.model == "wide_resnet50_2"}
    assert "served onnx / served torchscript at c16" in checks
    assert [r.model for r in rows] == [name for name in names for _ in range(8)]


def test_a_format_the_run_did_not_serve_has_no_rows() -> None:
    rows = headline(run({"resnet18": model()}, formats=("torchscript",)))
    assert [r.check for r in rows] == [
        "served c16 / in-process limit (torchscript)",
        "p50 c1 - in-process batch-1 latency, ms (torchscript)",
        "errors, c <= 64 (torchscript)",
        "ours / stock throughput at c16",
    ]


def without_point(served_model: ServedModel, concurrency: int) -> ServedModel:
    points = tuple(p for p in served_model.points if p.load.concurrency != concurrency)
    return replace(served_model, points=points)


def test_missing_measurements_fail_their_rows() -> None:
    broken = model()
    broken.served["ours-torchscript"] = without_point(broken.served["ours-torchscript"], 16)
    del broken.served["stock"]
    del broken.in_process["onnx"]
    rows = headline(run({"resnet18": broken}))
    assert len(rows) == 8  # every row kept
    not_measured = {r.check for r in rows if r.value is None}
    assert not_measured == {
        "served c16 / in-process limit (torchscript)",  # no point at 16 clients
        "served c16 / in-process limit (onnx)",  # no limit to compare with
        "p50 c1 - in-process batch-1 latency, ms (onnx)",
        "ours / stock throughput at c16",  # no stock setup
        "served onnx / served torchscript at c16",  # no torchscript point at 16
    }
    assert not any(r.passed for r in rows if r.value is None)
    assert row(rows, "errors, c <= 64 (torchscript)").passed  # what was measured still counts


def test_a_ratio_against_a_setup_without_answers_is_not_measured() -> None:
    """Stock and ours-torchscript answered nothing at 16 clients (only errors): the ratios
    against them fail as not measured instead of dividing by zero at the end of a run."""
    silent = model()
    for label in ("stock", "ours-torchscript"):
        silent.served[label] = ServedModel(20.0, (ServedPoint(load(16, 0.0, errors=3), IDLE),))
    rows = headline(run({"resnet18": silent}, EVERY_FORMAT))
    for check in (OVER_STOCK, OVER_TS, OPENVINO_OVER_TS):
        assert (row(rows, check).value, row(rows, check).passed) == (None, False)
    assert row(rows, TS_LIMIT).value == 0.0  # a measured zero is a figure


def test_a_setup_that_served_nothing_fails_all_its_rows() -> None:
    nothing = model()
    del nothing.served["ours-onnx"]
    rows = headline(run({"resnet18": nothing}))
    onnx = [r for r in rows if "onnx" in r.check]
    assert len(onnx) == 4 and all(r.value is None and not r.passed for r in onnx)


def test_the_report_shows_a_missing_measurement_as_a_failed_row() -> None:
    broken = model()
    del broken.served["stock"]
    table = headline_section(headline(run({"resnet18": broken})), [])[1]
    assert "| ours / stock throughput at c16 | resnet18 | not measured | >= 4.0 | FAIL |" in table


def test_a_target_can_name_its_models() -> None:
    only_50 = replace(FORMAT_TARGETS[0], models=("resnet50",))
    assert only_50.applies("resnet50", "onnx") and not only_50.applies("resnet18", "onnx")
    assert FORMAT_TARGETS[0].applies("resnet18", "onnx")
    assert not COMPARISON_TARGETS[0].applies("resnet18", "onnx")  # stock serves TorchScript
