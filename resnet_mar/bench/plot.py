"""``bench.png``: throughput (top) and p99 (bottom) against concurrency, one column per model;
each in-process limit is a dashed line in the colour of the setup serving that file."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from resnet_mar.bench.results import Results
from resnet_mar.bench.setups import ours


def plot(results: Results, path: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concurrencies, colours = results.settings.concurrencies, {}
    columns = len(results.models)
    fig, axes = plt.subplots(2, columns, figsize=(6 * columns, 8), squeeze=False)
    for (top, bottom), (name, model) in zip(axes.T, results.models.items(), strict=True):
        for label, served in model.served.items():
            colour = colours.setdefault(label, f"C{len(colours)}")
            xs = [p.load.concurrency for p in served.points]
            rps = [p.load.throughput_rps for p in served.points]
            p99 = [p.load.latency_ms.p99 for p in served.points]
            top.plot(xs, rps, "o-", color=colour, label=label)
            bottom.plot(xs, p99, "o-", color=colour, label=label)
        for fmt, limit in model.in_process.items():
            colour = colours.get(ours(fmt), "gray")
            label = f"in-process limit ({fmt})"
            top.axhline(limit.limit_img_per_s, linestyle="--", color=colour, label=label)
        top.set(title=f"{name}: throughput", ylabel="req/s", xscale="log", ylim=(0, None))
        bottom.set(title=f"{name}: p99 latency", ylabel="ms", xscale="log", yscale="log")
        bottom.set_xlabel("concurrent clients (closed loop)")
        for ax in (top, bottom):
            ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
