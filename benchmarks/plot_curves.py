"""Held-out quality against training steps, as an SVG line chart for the docs, from time-to-quality runs.

    python benchmarks/plot_curves.py --runs benchmarks/results/ttq_shapes_s_base.json ... --out docs/quality_vs_steps.svg

Each run (``time_to_quality.py`` JSON) is one line: the share of held-out captions whose samples the
attribute judge reads with every attribute right, at each snapshot; ``--attribute shape`` plots one
attribute instead. Written by hand as SVG text (no plotting library in the project's dependencies): axes,
grid, one polyline per run and a legend.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 400
LEFT, RIGHT, TOP, BOTTOM = 60, 230, 30, 50
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def label_of(report: dict) -> str:
    settings = [a.lstrip("-").split("init_args.", 1)[-1] for a in report.get("fit_args", [])]
    settings = [s.split("=")[0] + "=" + Path(s.split("=", 1)[1]).name if "=" in s else s for s in settings]
    return ", ".join(settings) or "the recipe"


def chart(runs: list[dict], attribute: str | None, title: str, labels: list[str] | None = None) -> str:
    points = [[(row["step"], row["accuracy"] if attribute is None else row["accuracy_per_attribute"][attribute])
               for row in run["snapshots"]] for run in runs]
    max_step = max(step for line in points for step, _ in line)
    x = lambda step: LEFT + (WIDTH - LEFT - RIGHT) * step / max_step  # noqa: E731
    y = lambda score: TOP + (HEIGHT - TOP - BOTTOM) * (1 - score)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
             f'font-size="12"><rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{LEFT}" y="18" font-size="14">{escape(title)}</text>']
    for tick in range(0, 11, 2):
        score = tick / 10
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(score):.1f}" y2="{y(score):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{y(score) + 4:.1f}" text-anchor="end">{score:.1f}</text>')
    step_ticks = sorted({step for line in points for step, _ in line})
    for step in step_ticks:
        parts.append(f'<text x="{x(step):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{step}</text>')
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 12}" text-anchor="middle">training steps</text>')
    parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="black"/>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" stroke="black"/>')
    for index, (run, line) in enumerate(zip(runs, points, strict=True)):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{x(step):.1f},{y(score):.1f}" for step, score in line)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{x(step):.1f}" cy="{y(score):.1f}" r="3" fill="{colour}"/>' for step, score in line]
        legend_y = TOP + 16 * index
        parts.append(f'<line x1="{WIDTH - RIGHT + 12}" x2="{WIDTH - RIGHT + 30}" y1="{legend_y}" y2="{legend_y}" '
                     f'stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 36}" y="{legend_y + 4}" font-size="11">{escape(labels[index] if labels else label_of(run))}</text>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="time_to_quality.py JSONs, one line each")
    parser.add_argument("--attribute", default=None, help="plot this attribute's accuracy instead of all of them")
    parser.add_argument("--labels", nargs="+", default=None, help="legend entries (default: each run's settings)")
    parser.add_argument("--title", default="Held-out captions with every attribute right")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs = [json.loads(Path(path).read_text()) for path in args.runs]
    if args.labels and len(args.labels) != len(runs):
        parser.error(f"--labels: {len(args.labels)} given for {len(runs)} runs")
    Path(args.out).write_text(chart(runs, args.attribute, args.title, args.labels))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
