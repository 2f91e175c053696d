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

    models = list(results.models)
    concurrencies = results.settings.concurrencies
    colours: dict[str, str] = {}
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for column, name in enumerate(models):
        model = results.models[name]
        top, bottom = axes[0][column], axes[1][column]
        for label, served in model.served.items():
            colour = colours.setdefault(label, f"C{len(colours)}")
            xs = [p.load.concurrency for p in served.points]
            throughput = [p.load.throughput_rps for p in served.points]
            p99 = [p.load.latency_ms.p99 for p in served.points]
            top.plot(xs, throughput, "o-", color=colour, label=label)
            bottom.plot(xs, p99, "o-", color=colour, label=label)
        for fmt, limit in model.in_process.items():
            top.axhline(
                limit.limit_img_per_s,
                linestyle="--",
                color=colours.get(ours(fmt), "gray"),
                label=f"in-process limit ({fmt})",
            )
        top.set(title=f"{name}: throughput", ylabel="req/s", xscale="log", ylim=(0, None))
        bottom.set(
            title=f"{name}: p99 latency",
            ylabel="ms",
            xlabel="concurrent clients (closed loop)",
            xscale="log",
            yscale="log",
        )
        for ax in (top, bottom):
            ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
