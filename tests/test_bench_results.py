"""The benchmark's results as data: what bench.json keeps and how it reads back, the arithmetic
of derived figures, and the served setups a run measures."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from resnet_mar.bench.headline import attainable_img_per_s
from resnet_mar.bench.load_client import Latency, LoadPoint
from resnet_mar.bench.results import (
    InProcessLimit,
    JpegPoint,
    JpegSizes,
    OtherLoad,
    Results,
    ServedModel,
    ServedPoint,
    from_dict,
)
from resnet_mar.bench.setups import STOCK_CONFIG, V2, served_setups
from resnet_mar.server_doors import ServerFolder
from resnet_mar.torchserve import server_environment
from resnet_mar.worker_environment import WORKER_ENVIRONMENT
from tests.bench_runs import model, run


def measured(concurrency: int = 16) -> LoadPoint:
    """A point as the load client returns it: to the precision bench.json keeps."""
    return LoadPoint(
        concurrency=concurrency,
        window_s=10.0,
        warmup_s=2.346,
        requests=963,
        throughput_rps=96.295,
        latency_ms=Latency(163.2, 178.01, 232.44, 166.0),
        errors=0,
        error_kinds={},
        client_cpu_s=0.123,
    )


def through_json(value: Any) -> Any:
    """``value`` written as bench.json writes it and read back as its own type."""
    return from_dict(type(value), json.loads(json.dumps(asdict(value))))


def test_a_point_reads_back_as_written_even_without_answers() -> None:
    empty = LoadPoint(1, 5.0, 1.0, 0, 0.0, Latency.of([]), 3, {"HTTP 503": 3}, 0.01)
    again = through_json(empty)
    assert again.error_kinds == {"HTTP 503": 3} and again.requests == 0
    assert math.isnan(again.latency_ms.p50)  # bench.json writes NaN for none


def test_served_model_round_trip_and_lookup() -> None:
    point = ServedPoint(measured(), OtherLoad(0.01, 0.0))
    sizes = JpegSizes(
        JpegPoint("640x480", 82417, measured(1)),
        JpegPoint("4000x3000", 1136384, measured(1)),
        5.32,
    )
    model_results = ServedModel(21.5, (point,), sizes)
    assert through_json(model_results) == model_results
    assert through_json(ServedModel(21.5, (point,))).jpeg_size is None
    assert model_results.at(16) == point and model_results.at(64) is None


def test_limit_batch_sizes_are_numbers_in_results_and_keys_in_json() -> None:
    limit = InProcessLimit(
        file="resnet18.pt",
        threads=2,
        img_per_s={"contiguous": {1: 74.4, 16: 95.5}, "channels_last": {1: 78.8, 16: 131.2}},
        batch1_ms={"contiguous": 13.4, "channels_last": 12.6},
        limit_img_per_s=131.2,
        best_batch=16,
        best_layout="channels_last",
        batch1_latency_ms=12.6,
        one_thread_img_per_s=70.0,
        other=OtherLoad(0.01, 0.0),
    )
    data = json.loads(json.dumps(asdict(limit)))
    assert data["img_per_s"]["channels_last"] == {"1": 78.8, "16": 131.2}
    assert from_dict(InProcessLimit, data) == limit


def test_a_whole_run_reads_back_as_written() -> None:
    results = run({"resnet18": model(), "resnet50": model()})
    assert through_json(results) == results


def test_a_file_that_is_not_this_versions_fails_whole() -> None:
    """A figure missing, renamed or of the wrong type fails where bench.json is read, saying
    where; no figure is quietly taken as "not measured"."""

    def document() -> dict[str, Any]:
        return json.loads(json.dumps(asdict(run({"resnet18": model()}))))

    missing = document()
    del missing["fp32_peak"]
    with pytest.raises(ValueError, match=r"^Results needs the keys \[.*'fp32_peak'.*\], got"):
        from_dict(Results, missing)

    renamed = document()
    point = renamed["models"]["resnet18"]["served"]["stock"]["points"][0]["load"]
    point["rps"] = point.pop("throughput_rps")
    with pytest.raises(ValueError, match=r"Results.models: ModelResults.served: .*LoadPoint needs"):
        from_dict(Results, renamed)

    mistyped = document()
    mistyped["models"]["resnet18"]["gflop_per_image"] = "2.0"
    with pytest.raises(ValueError, match=r"gflop_per_image: expected float, got '2\.0'$"):
        from_dict(Results, mistyped)

    mistyped = document()
    mistyped["settings"]["concurrencies"] = 16
    with pytest.raises(ValueError, match=r"Settings.concurrencies: expected tuple\[int, \.\.\.\]"):
        from_dict(Results, mistyped)


@pytest.mark.parametrize(
    ("limit", "preprocessing_ms", "cores", "expected"),
    [
        (100.0, 0.0, 2, 100.0),  # free preprocessing: the limit itself
        (100.0, 10.0, 2, 1 / (0.01 + 0.005)),  # 10 ms + 5 ms per image
        (100.0, 10.0, 1, 50.0),  # one core pays all of it
        (131.2, 1.93, 2, 116.456),  # resnet18 in the run of 2026-11-22: "116.5 img/s"
    ],
)
def test_attainable_img_per_s(
    limit: float, preprocessing_ms: float, cores: int, expected: float
) -> None:
    assert attainable_img_per_s(limit, preprocessing_ms, cores) == pytest.approx(expected, abs=1e-3)


def test_served_setups_in_measuring_order() -> None:
    """Right after ours-torchscript, the same archive over v2 (16 clients only), then the stock
    setup (same .pt); only ours get the workers' environment, and only ours-<format> the JPEG
    sizes (TorchScript), all-busy and the limit measured again."""
    setups = served_setups(["torchscript", "onnx", "openvino", "int8"])
    assert [s.label for s in setups] == [
        "ours-torchscript",
        "ours-torchscript-v2",
        "stock",
        "ours-onnx",
        "ours-openvino",
        "ours-int8",
    ]
    ours_ts, v2, stock, *_ = setups
    assert stock.server() == {
        "config_text": STOCK_CONFIG,
        "worker_environment": {},
        "isolated": False,
    }
    assert (stock.stock, stock.model_format) == (True, "torchscript")
    assert ours_ts.server() == {
        "config_text": None,
        "worker_environment": WORKER_ENVIRONMENT,
        "isolated": True,
    }
    assert [s.jpeg_sizes for s in setups] == [True, False, False, False, False, False]
    assert [s.bound_and_all_busy for s in setups] == [True, False, False, True, True, True]
    assert all(s.concurrencies is None for s in setups if s is not v2)
    assert [s.model_format for s in setups[3:]] == ["onnx", "openvino", "int8"]
    assert not any(s.stock for s in setups if s is not stock)
    requests = ours_ts.requests("resnet18", [b"jpeg"])
    assert [(r.method, r.path) for r in requests] == [("PUT", "/predictions/resnet18")]


def test_the_v2_setup_is_our_torchscript_server_asked_over_open_inference() -> None:
    """Same archive, server and environment as ours-torchscript; only the requests differ."""
    ours_ts, v2 = served_setups(["torchscript"])[:2]
    assert v2.label == V2 and v2.concurrencies == (16,)
    assert (v2.model_format, v2.stock, v2.server()) == (
        ours_ts.model_format,
        ours_ts.stock,
        ours_ts.server(),
    )
    (request,) = v2.requests("resnet18", [b"jpeg"])
    assert (request.method, request.path) == ("POST", "/v2/models/resnet18/infer")


def test_the_stock_server_runs_without_the_tuning_the_benchmark_itself_runs_with(
    tmp_path: Path,
) -> None:
    """The benchmark re-executes itself with the workers' environment (for its in-process
    limits); TorchServe inherits the benchmark's environment, so the stock baseline must lose
    those variables, or it is measured tuned (it was: GOMP_SPINCOUNT alone lifted stock
    resnet18 at 16 clients to 37.7 req/s, a ratio of 1.6 instead of 4-8)."""
    stock = next(s for s in served_setups(["torchscript"]) if s.label == "stock")
    folder = ServerFolder(tmp_path)
    inherited = {"PATH": "/usr/bin", **WORKER_ENVIRONMENT}
    env = server_environment(inherited, stock.server()["worker_environment"], folder)
    assert not set(WORKER_ENVIRONMENT) & set(env)
    assert env["PATH"] == "/usr/bin" and env["TEMP"] == env["TMPDIR"] == str(folder.tmp)
    tuned = server_environment({"PATH": "/usr/bin"}, WORKER_ENVIRONMENT, folder)
    assert {k: tuned[k] for k in WORKER_ENVIRONMENT} == WORKER_ENVIRONMENT
