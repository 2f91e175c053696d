"""One whole benchmark run with every build, timing and server faked: the order of the setups,
what each fills in, and the outputs written from it (bench.json reading back as the run).

The measurements themselves are tested where they live (test_bench_limit.py, test_load_client.py);
this checks the run that strings them together, which otherwise only ``make bench`` exercises.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from resnet_mar.bench import cli, served
from resnet_mar.bench.load_client import HttpRequest, Latency, LoadPoint
from resnet_mar.bench.machine import ROLES
from resnet_mar.bench.results import BoundBeside, MatmulPeak, Results, from_dict
from tests.bench_runs import IDLE, limit


def fake_point(
    url: str,
    requests: list[HttpRequest],
    concurrency: int,
    at_window: Callable[[], object] = lambda: None,
    **_: float,
) -> LoadPoint:
    """10 req/s per client over /predictions, 9 over the Open Inference Protocol; the CPU
    sampled as a window opens and closes, as the load client does."""
    at_window()
    at_window()
    rps = concurrency * (9.0 if requests[0].path.startswith("/v2/") else 10.0)
    return LoadPoint(
        concurrency, 10.0, 2.0, round(rps * 10), rps, Latency(5, 6, 7, 5.5), 0, {}, 0.1
    )


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], dict[str, Any]]]:
    """Every step faked; the servers started, in order: their store's folder, their models and
    how they were started."""
    started: list[tuple[str, list[str], dict[str, Any]]] = []

    @contextlib.contextmanager
    def private_server(store: Path, names: list[str], **how: Any) -> Iterator[SimpleNamespace]:
        started.append((store.parent.name, names, how))
        endpoints = SimpleNamespace(inference="http://127.0.0.1:9")
        yield SimpleNamespace(endpoints=endpoints, group_pids=lambda: [])

    def built(work: object, fmt: str, models: list[str]) -> dict[str, Path]:
        return {name: Path(f"{name}.{fmt}") for name in models}

    monkeypatch.setattr(cli, "build_and_archive", built)
    monkeypatch.setattr(cli, "archive_stock", lambda *_: None)
    monkeypatch.setattr(
        cli,
        "archive_floor",
        lambda work, config: started.append(("archived floor", [config.parent.name], {})),
    )
    monkeypatch.setattr(cli, "gflop_per_image", lambda *_: 2.0)
    monkeypatch.setattr(cli, "fp32_matmul_peak", lambda: MatmulPeak(400.0, 64, 2, 5, IDLE))
    # 2 ms per photo at the start, 2.5 once the servers run (measured beside their points)
    monkeypatch.setattr(cli, "preprocessing_cost", lambda *_: 2.5 if points else 2.0)
    monkeypatch.setattr(cli, "in_process_limit", lambda *_: limit(100.0, one_thread=50.0))

    def at_best_batch(path: Path, fmt: str, *_: Any) -> float:
        started.append(("bound", [path.stem, fmt], {"after points": len(points)}))
        return 95.0

    def run_point(url: str, requests: list[HttpRequest], c: int, **how: Any) -> LoadPoint:
        points.append(c)
        return fake_point(url, requests, c, **how)

    points: list[int] = []
    monkeypatch.setattr(cli, "at_best_batch", at_best_batch)
    monkeypatch.setattr(served, "run_point", run_point)
    monkeypatch.setattr(served, "private_server", private_server)
    return started


def test_a_run_fills_every_figure_and_writes_its_outputs(
    servers: list[tuple[str, list[str], dict[str, Any]]], tmp_path: Path
) -> None:
    args = cli.parser().parse_args(
        ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--formats", "onnx"]
    )
    results = cli.run(args)
    bounds = [(names, how["after points"]) for what, names, how in servers if what == "bound"]
    servers[:] = [server for server in servers if server[0] != "bound"]
    assert [(folder, names) for folder, names, _ in servers] == [
        ("archived floor", ["resnet18"]),  # with resnet18's serving settings
        ("torchscript", ["resnet18", "resnet50"]),  # ours
        ("torchscript", ["resnet18", "resnet50"]),  # the same, over v2
        ("torchscript", ["resnet18"]),  # stock, one server per model
        ("torchscript", ["resnet50"]),
        ("onnx", ["resnet18", "resnet50"]),
        ("floor", ["floor"]),  # the empty handler, served as ours are
    ]
    assert not servers[3][2]["isolated"] and servers[3][2]["worker_environment"] == {}
    assert servers[-1][2]["isolated"] and servers[-1][2]["worker_environment"]
    floor = results.protocol_floor
    assert floor and floor.load.concurrency == 16 and floor.cpu
    assert list(floor.cpu.ms_per_answer) == list(ROLES)
    model = results.models["resnet50"]
    assert list(model.served) == ["ours-torchscript", "ours-torchscript-v2", "stock", "ours-onnx"]
    assert [p.load.concurrency for p in model.served["ours-torchscript-v2"].points] == [16]
    assert model.served["ours-torchscript"].jpeg_size is not None
    profiles = [p.cpu for served in model.served.values() for p in served.points]
    assert all(cpu and list(cpu.ms_per_answer) == list(ROLES) for cpu in profiles)
    assert model.served["ours-onnx"].jpeg_size is None
    # the bound measured again right before and after the headline point of our setups only
    beside = {label: served.bound_beside for label, served in model.served.items()}
    assert beside["ours-onnx"] == BoundBeside((95.0, 95.0), (2.5, 2.5), IDLE)
    assert beside["ours-torchscript"] == beside["ours-onnx"]
    assert beside["stock"] is None and beside["ours-torchscript-v2"] is None
    # ours-torchscript: resnet18's points at 1, 4, 16, 64, a JPEG pair, then resnet50's
    assert bounds[:4] == [
        (["resnet18", "torchscript"], 2),  # after the points at 1 and 4 clients
        (["resnet18", "torchscript"], 3),  # after the one at 16
        (["resnet50", "torchscript"], 8),
        (["resnet50", "torchscript"], 9),
    ]
    assert len(bounds) == 2 * 2 * 2  # before and after, two models, two formats
    assert (model.gflop_per_image, model.preprocessing_ms) == (2.0, 2.0)
    assert list(results.all_busy) == ["ours-torchscript", "ours-onnx"]
    assert results.all_busy["ours-onnx"].shares_sum == 2.0  # each as fast as alone (faked)
    assert results.headline == cli.headline.rows(results) and results.load_end

    cli.write_outputs(results, args.out)
    bench_json = json.loads((args.out / "bench.json").read_text())
    assert from_dict(Results, bench_json) == results
    assert (args.out / "report.md").read_text() == cli.render(results)
    assert (args.out / "bench.png").stat().st_size > 0
