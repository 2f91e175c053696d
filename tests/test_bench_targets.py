"""The headline's targets on crafted results: each passes on one side of its threshold and
fails on the other, applies to every model measured, and fails (never vanishes) when the run
did not measure what it needs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from resnet_mar.bench.report import headline_section
from resnet_mar.bench.results import (
    AllBusy,
    BusyModel,
    HeadlineRow,
    InProcessLimit,
    Machine,
    ModelResults,
    OtherLoad,
    Results,
    ServedModel,
    ServedPoint,
    Settings,
)
from resnet_mar.bench.targets import COMPARISON_TARGETS, FORMAT_TARGETS, headline
from resnet_mar.load_client import Latency, LoadPoint

IDLE = OtherLoad(0.0, 0.0)
CONCURRENCIES = (1, 4, 16, 64)
TS_LIMIT = "served c16 / in-process limit (torchscript)"
ONNX_C1 = "p50 c1 - in-process batch-1 latency, ms (onnx)"
OVER_STOCK = "ours / stock throughput at c16"
OVER_TS = "served onnx / served torchscript at c16"


def load(concurrency: int, rps: float, p50_ms: float = 50.0, errors: int = 0) -> LoadPoint:
    return LoadPoint(
        concurrency=concurrency,
        window_s=10.0,
        warmup_s=2.0,
        requests=round(rps * 10),
        throughput_rps=rps,
        latency_ms=Latency(p50_ms, p50_ms, p50_ms, p50_ms),
        errors=errors,
        error_kinds={"HTTP 503": errors} if errors else {},
        client_cpu_s=0.01,
    )


def served(rps: float, c1_p50_ms: float = 15.0, errors_at_64: int = 0) -> ServedModel:
    """A sweep at the run's concurrencies: ``rps`` from 4 clients on."""
    points = [
        load(1, rps / 2, p50_ms=c1_p50_ms),
        load(4, rps),
        load(16, rps),
        load(64, rps, errors=errors_at_64),
    ]
    return ServedModel(20.0, tuple(ServedPoint(p, IDLE) for p in points))


def limit(img_per_s: float, batch1_ms: float = 10.0) -> InProcessLimit:
    return InProcessLimit(
        file="m.pt",
        threads=2,
        img_per_s={"contiguous": {1: img_per_s / 2, 8: img_per_s}},
        batch1_ms={"contiguous": batch1_ms},
        limit_img_per_s=img_per_s,
        best_batch=8,
        best_layout="contiguous",
        batch1_latency_ms=batch1_ms,
        other=IDLE,
    )


def model(
    ts_rps: float = 90.0,
    onnx_rps: float = 150.0,
    stock_rps: float = 20.0,
    c1_p50_ms: float = 15.0,
) -> ModelResults:
    """Every figure a target needs, passing them all: limits 100 img/s, batch-1 10 ms."""
    return ModelResults(
        in_process={"torchscript": limit(100.0), "onnx": limit(100.0)},
        served={
            "ours-torchscript": served(ts_rps, c1_p50_ms),
            "stock": served(stock_rps),
            "ours-onnx": served(onnx_rps, c1_p50_ms),
        },
        preprocessing_ms=2.0,
    )


def run(
    models: dict[str, ModelResults], formats: tuple[str, ...] = ("torchscript", "onnx")
) -> Results:
    return Results(
        started="2026-11-22 00:00:00 UTC",
        machine=Machine("cpu", 2, 23.5, "Linux"),
        versions={"torch": "2.14.0"},
        load_start=[0.0, 0.0, 0.0],
        settings=Settings(formats, CONCURRENCIES, 10.0, 2.0),
        models=models,
    )


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
    ],
)
def test_each_target_at_its_threshold(
    figures: dict[str, float], check: str, value: float, passed: bool
) -> None:
    found = row(headline(run({"resnet18": model(**figures)})), check)
    assert (found.value, found.passed) == (value, passed)


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
