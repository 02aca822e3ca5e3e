"""Training curves from runs' `metrics.jsonl`: one panel per metric, one line per workdir, as a PNG.

    python -m vit_jax.tools.plot_metrics workdirs/run1 [workdirs/run2 ...] --out curves.png
    python -m vit_jax.tools.plot_metrics workdirs/run1 --metrics 'loss|accuracy' --out curves.png

The trainer calls `plot_workdirs([workdir], workdir + '/curves.png')` at the end of every run. By default every
numeric figure is plotted except bookkeeping ones (throughput, skipped counts, evaluation seconds, example counts);
`--metrics REGEX` selects panels by name. Loss panels come first, then accuracies, then the learning rate, then the
rest in name order.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Optional, Sequence

import numpy as np

# Figures that describe the run rather than the model; left out unless --metrics asks for them.
SKIP = re.compile(r'(img_per_sec|skipped_updates|skipped_examples|/seconds$|num_examples|max_distance|^step$)')


def read_metrics(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{metric: (steps, values)} of a `metrics.jsonl` (or a workdir holding one); non-numeric values are skipped.

    A resumed run may log a step twice: the last value of a step wins.
    """
    if os.path.isdir(path):
        path = os.path.join(path, 'metrics.jsonl')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such file (a run writes WORKDIR/metrics.jsonl as it logs).')
    series: dict[str, dict[int, float]] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # A line being written while we read.
            step = row.get('step')
            if not isinstance(step, (int, float)):
                continue
            for k, v in row.items():
                if k == 'step' or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    continue
                series.setdefault(k, {})[int(step)] = float(v)
    return {k: (np.array(sorted(d)), np.array([d[s] for s in sorted(d)])) for k, d in series.items()}


def _order(name: str) -> tuple:
    base = name.rsplit('/', 1)[-1]
    rank = 0 if 'loss' in base else 1 if 'acc' in base else 2 if base == 'lr' else 3
    return (rank, name)


def select_metrics(names: Sequence[str], pattern: Optional[str] = None) -> list[str]:
    """The metrics to draw, in panel order."""
    if pattern:
        chosen = [n for n in names if re.search(pattern, n)]
    else:
        chosen = [n for n in names if not SKIP.search(n)]
    return sorted(set(chosen), key=_order)


def plot_series(runs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], out: str, *,
                metrics: Optional[str] = None, ncols: int = 3, title: Optional[str] = None) -> str:
    """Draws {run label: {metric: (steps, values)}} into `out` (PNG); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = select_metrics(sorted({k for r in runs.values() for k in r}), metrics)
    if not names:
        have = sorted({k for r in runs.values() for k in r})
        raise ValueError(f'No metrics to plot (pattern {metrics!r}; the runs have: {", ".join(have) or "none"}).')
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.0 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for label, series in runs.items():
            if name in series:
                steps, values = series[name]
                ax.plot(steps, values, marker='o' if len(steps) <= 20 else None, markersize=3, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel('step', fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if name.endswith('/lr') or name == 'lr':
            ax.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
        if len(runs) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    return out


def _labels(workdirs: Sequence[str]) -> list[str]:
    dirs = [os.path.dirname(os.path.abspath(w)) if w.endswith('.jsonl') else w for w in workdirs]
    names = [os.path.basename(os.path.normpath(w)) or w for w in dirs]
    if len(set(names)) < len(names):
        names = [os.path.normpath(w) for w in dirs]
    return names


def plot_workdirs(workdirs: Sequence[str], out: str, metrics: Optional[str] = None, ncols: int = 3) -> str:
    """Reads each workdir's metrics.jsonl and draws them into `out`; returns the path."""
    runs = {label: read_metrics(w) for label, w in zip(_labels(workdirs), workdirs)}
    return plot_series(runs, out, metrics=metrics, ncols=ncols)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog='python -m vit_jax.tools.plot_metrics', description=__doc__.split('\n\n')[0])
    p.add_argument('workdirs', nargs='+', help='Run workdirs (or metrics.jsonl files).')
    p.add_argument('--out', default='curves.png', help='The PNG to write (default curves.png).')
    p.add_argument('--metrics', default=None, help="A regex selecting the panels (e.g. 'loss|accuracy').")
    p.add_argument('--ncols', type=int, default=3, help='Panels per row.')
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        path = plot_workdirs(args.workdirs, args.out, metrics=args.metrics, ncols=args.ncols)
    except (FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'Wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
