r"""Parameters and GFLOPs of every registered model, next to the papers' figures.

    python -m vit_jax.tools.model_table                       # every registered model (slow: one compile each)
    python -m vit_jax.tools.model_table --filter 'ViT-B/16$' --format csv

Parameters: `models.count_params` (the `params` collection, via `jax.eval_shape`). GFLOPs: XLA's cost analysis of
the compiled forward pass (`train=False`) on one example at the model's default resolution (or the paper's, where
the paper states another), compiled from `jax.ShapeDtypeStruct`s only, so no weight is materialised:
`jax.jit(f).lower(abstract variables, abstract images).compile().cost_analysis()['flops']`.

Convention: papers report "FLOPs" as multiply-accumulates (MACs; DeiT, pycls, fvcore, the CvT / T2T / CrossViT
tables), so the table shows GMACs = XLA flops / 2 / 1e9 under "GFLOPs". XLA counts every matmul (the attention
QK^T and AV products included), convolutions, and elementwise / reduction ops (1 flop per output element of e.g. an
add), so it sits a little above a pure-MAC count. Paper figures that leave the attention matmuls out (the CCT
README) are marked in their note.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any, Optional

# name: (params in M, GFLOPs (= GMACs), resolution of the GFLOPs figure or None (the model default), source note)
PAPER: dict[str, tuple[Optional[float], Optional[float], Optional[int], str]] = {
    # ViT (Dosovitskiy et al. T1 params; GFLOPs as cited by DeiT / CvT T3 (DeiT convention)).
    'ViT-B/16': (86, 17.6, 224, 'ViT T1 / DeiT T1'),
    'ViT-L/16': (307, 61.6, 224, 'ViT T1 / DeiT'),
    'ViT-H/14': (632, 167, 224, 'ViT T1'),
    'ViT-Ti/16': (5.7, 1.26, 224, 'DeiT-Ti as in the DTN paper (LN)'),
    'ViT-S/16': (22.1, 4.60, 224, 'DeiT-S as in the DTN paper (LN)'),
    'DeiT-Ti/16-distilled': (6, None, 224, 'DeiT T1'),
    'DeiT-S/16-distilled': (22, None, 224, 'DeiT T1'),
    'DeiT-B/16-distilled': (87, None, 224, 'DeiT T1'),
    # Early convolutions (Xiao et al.) T1; flops are multiply-adds (pycls).
    'ViTP-1GF': (4.8, 1.1, 224, 'Xiao et al. T1'), 'ViTP-4GF': (18.5, 3.9, 224, 'Xiao et al. T1'),
    'ViTP-18GF': (86.7, 17.5, 224, 'Xiao et al. T1'), 'ViTP-36GF': (178.4, 35.9, 224, 'Xiao et al. T1'),
    'ViTC-1GF': (4.6, 1.1, 224, 'Xiao et al. T1'), 'ViTC-4GF': (17.8, 4.0, 224, 'Xiao et al. T1'),
    'ViTC-18GF': (81.6, 17.7, 224, 'Xiao et al. T1'), 'ViTC-36GF': (167.8, 35.0, 224, 'Xiao et al. T1'),
    # Compact Transformers (paper main table, CIFAR 32 px; CCT-14/7x2: README, ImageNet 224, MACs w/o attention).
    'CCT-2/3x2': (0.28, 0.04, 32, 'CCT paper'), 'CCT-7/3x2': (3.85, 0.29, 32, 'CCT paper'),
    'CCT-7/3x1': (3.76, 1.19, 32, 'CCT paper (README: 0.947G w/o attention matmuls)'),
    'ViT-Lite-7/4': (3.72, 0.26, 32, 'CCT paper'), 'ViT-Lite-7/8': (3.74, 0.06, 32, 'CCT paper'),
    'ViT-Lite-7/16': (3.89, 0.02, 32, 'CCT paper'), 'CVT-7/4': (3.72, 0.25, 32, 'CCT paper'),
    'CVT-7/8': (3.74, 0.06, 32, 'CCT paper'),
    'CCT-14/7x2': (22.36, 5.11, 224, 'CCT README (MACs w/o attention matmuls)'),
    # CvT T2.
    'CvT-13': (19.98, 4.53, 224, 'CvT T2'), 'CvT-21': (31.54, 7.13, 224, 'CvT T2'),
    'CvT-W24': (276.7, 60.86, 224, 'CvT T2'),
    # T2T-ViT README (MACs).
    'T2T-ViT-7': (4.3, 1.1, 224, 'T2T README'), 'T2T-ViT-10': (5.9, 1.5, 224, 'T2T README'),
    'T2T-ViT-12': (6.9, 1.8, 224, 'T2T README'), 'T2T-ViT-14': (21.5, 4.8, 224, 'T2T README'),
    'T2T-ViT-19': (39.2, 8.5, 224, 'T2T README'), 'T2T-ViT-24': (64.1, 13.8, 224, 'T2T README'),
    'T2T-ViT_t-14': (21.5, 6.1, 224, 'T2T README'), 'T2T-ViT_t-19': (39.2, 9.8, 224, 'T2T README'),
    'T2T-ViT_t-24': (64.1, 15.0, 224, 'T2T README'),
    # CrossViT T2 (GFLOPs at the paper's 240/224 two-branch input).
    'CrossViT-Ti': (6.9, 1.6, None, 'CrossViT T2'), 'CrossViT-S': (26.7, 5.6, None, 'CrossViT T2'),
    'CrossViT-B': (104.7, 21.2, None, 'CrossViT T2'), 'CrossViT-9': (8.6, 1.8, None, 'CrossViT T2'),
    'CrossViT-15': (27.4, 5.8, None, 'CrossViT T2'), 'CrossViT-18': (43.3, 9.0, None, 'CrossViT T2'),
    'CrossViT-9†': (8.8, 2.0, None, 'CrossViT T2'), 'CrossViT-15†': (28.2, 6.1, None, 'CrossViT T2'),
    'CrossViT-18†': (44.3, 9.5, None, 'CrossViT T2'),
    # DHVT (abstract / README, ImageNet 224).
    'DHVT-S': (24.0, 5.1, 224, 'DHVT abstract'), 'DHVT-T': (6.2, 1.4, 224, 'DHVT README'),
    'DHVT-S-CIFAR/2': (22.8, None, 32, 'DHVT abstract'),
    # DTN README (ImageNet 224).
    'DTN-ViT-T*': (5.7, 1.26, 224, 'DTN README'), 'DTN-ViT-S*': (22.1, 4.88, 224, 'DTN README'),
    'DTN-ViT-B*': (86.5, 18.13, 224, 'DTN README'),
    # TimeSformer T1 (params incl. an SSv2 head); 0.59 TFLOPs over 3 views = 196.7 GFLOPs per 8x224 view.
    'TimeSformer': (121.4, 196.7, None, 'TimeSformer T1/T2'),
    # DPT (depth models).
    'DPT-Hybrid': (123, None, None, 'DPT paper'), 'DPT-Large': (344, None, None, 'DPT paper'),
}


def model_flops(model: Any, batch: int = 1) -> float:
    """XLA cost-analysis flops of `model`'s forward pass (`train=False`) on `batch` inputs, compiled abstractly."""
    import jax
    import jax.numpy as jnp

    from vit_jax import models

    x = jax.ShapeDtypeStruct(models.input_shape(model, batch), jnp.float32)
    variables = models.init_shapes(model, batch)

    def fwd(v, images):
        return model.apply(v, images, train=False)

    compiled = jax.jit(fwd).lower(variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops'])


def rows(filter_regex: Optional[str] = None) -> list[dict]:
    """One dict per registered model matching `filter_regex` (re.search on the name)."""
    from vit_jax import models

    out = []
    for name in models.list_models():
        if filter_regex and not re.search(filter_regex, name):
            continue
        paper = PAPER.get(name, (None, None, None, ''))
        row: dict[str, Any] = {'model': name, 'paper_params_m': paper[0], 'paper_gflops': paper[1],
                               'source': paper[3]}
        t0 = time.perf_counter()
        try:
            overrides = {'image_size': paper[2]} if paper[2] else {}
            try:
                model = models.get_model(name, **overrides)
            except (TypeError, ValueError):
                model = models.get_model(name)
            row['params'] = models.count_params(models.get_model(name))
            row['input'] = 'x'.join(str(s) for s in models.input_shape(model, 1)[1:-1])
            row['gflops'] = model_flops(model) / 2 / 1e9
        except Exception as e:  # noqa: BLE001 - a model with another call signature: report, do not stop.
            row.setdefault('params', None)
            row.setdefault('input', '')
            row['gflops'] = None
            row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:100]}'
        row['seconds'] = time.perf_counter() - t0
        out.append(row)
    return out


def _fmt(v: Any, spec: str) -> str:
    return '' if v is None else format(v, spec)


def format_rows(table: list[dict], fmt: str = 'markdown') -> str:
    """The table as markdown or CSV."""
    head = ['model', 'params', 'params (M)', 'paper params (M)', 'input', 'GFLOPs (MACs)', 'paper GFLOPs', 'source']
    lines = []
    for r in table:
        cells = [r['model'], _fmt(r['params'], 'd'), _fmt(r['params'] and r['params'] / 1e6, '.2f'),
                 _fmt(r['paper_params_m'], 'g'), r['input'], _fmt(r['gflops'], '.2f'), _fmt(r['paper_gflops'], 'g'),
                 r['source'] + (f" [{r['error']}]" if r.get('error') else '')]
        lines.append(cells)
    if fmt == 'csv':
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(head)
        w.writerows(lines)
        return buf.getvalue().rstrip('\n')
    if fmt != 'markdown':
        raise ValueError(f"format must be 'markdown' or 'csv', got {fmt!r}.")
    md = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    md += ['| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |' for cells in lines]
    return '\n'.join(md)


def main(argv: Optional[list[str]] = None) -> str:
    """Command-line entry point; prints and returns the table."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--filter', default=None, help="Regex on model names (re.search), e.g. 'ViT-B/16$' or '^CvT'.")
    p.add_argument('--format', default='markdown', choices=['markdown', 'csv'])
    args = p.parse_args(argv)
    table = rows(args.filter)
    if not table:
        from vit_jax import models

        raise SystemExit(f'No registered model matches {args.filter!r}; see models.list_models(): '
                         f'{", ".join(models.list_models()[:20])} ...')
    text = format_rows(table, args.format)
    print(text)
    sys.stdout.flush()
    return text


if __name__ == '__main__':
    main()
