"""What a run reports, from :class:`Results` alone: ``report.md`` (:func:`render`, the Jinja
template ``report.md`` beside this module filled in) and the lines printed at the end of the run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import jinja2

from resnet_mar import quantization
from resnet_mar.bench import floor_handler, headline, setups
from resnet_mar.bench.headline import shown
from resnet_mar.bench.results import Results
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

#: Block tags on lines of their own leave no line behind; ``f`` formats a figure by a spec. The
#: template reads the modules ``headline``, ``setups``, ``quantization`` and ``floor_handler`` for
#: their names.
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES.filters.update(f=format, shown=shown)
TEMPLATES.globals.update(headline=headline, setups=setups, quantization=quantization)
TEMPLATES.globals.update(floor_handler=floor_handler)
TEMPLATES.globals.update(environment=WORKER_ENVIRONMENT)


def render(results: Results) -> str:
    limits = list(results.limits())
    return TEMPLATES.get_template("report.md").render(
        results=results,
        limits=limits,
        busiest=headline.busiest_other(results),
        machine={**asdict(results.machine), **results.versions},
        headline_rows=headline.rows(results),
        notes=headline.notes(results),
        cpu_rows=headline.cpu_rows(results),
        batches=sorted({b for *_, limit in limits for s in limit.img_per_s.values() for b in s}),
        jpeg_sizes={
            name: served.jpeg_size
            for name, model in results.models.items()
            for served in [model.served.get(headline.TS)]
            if served and served.jpeg_size
        },
    )


def summary(results: Results) -> list[str]:
    """What the run prints at its end: the headline, the notes and the other load."""
    lines = ["", "Headline (the targets):"]
    for r in headline.rows(results):
        passed = "PASS" if r.passed else "FAIL"
        lines.append(f"  {passed}  {r.model:9s} {r.check}: {shown(r.value)} (target {r.target})")
    lines += [f"  info  {note}" for note in headline.notes(results)]
    lines.append(
        f"load average at start {results.load_start}, at end {results.load_end}; other "
        f"processes used at most {headline.busiest_other(results):.2f} cores during a measurement"
    )
    return lines
