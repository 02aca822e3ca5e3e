"""Benchmark CLI smoke test (tiny size, no timing assertions) and the model table tool."""

import json
import re

import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')


def test_bench_cli_tiny(tmp_path):
    import torch

    from benchmarks import bench

    out = tmp_path / 'r.json'
    threads = torch.get_num_threads()
    r = bench.main(['--model', 'ViT-testing', '--batch', '2', '--res', '32', '--reps', '1', '--warmup', '0',
                    '--xla-preset', 'default', '--threads', str(threads), '--peak-size', '256', '--out', str(out),
                    '--quiet', '--no-flush-denormal'])
    saved = json.loads(out.read_text())
    assert isinstance(saved, list) and saved[-1]['model'] == 'ViT-testing'
    for key in ('model', 'batch', 'res', 'dtype', 'torch_threads', 'matmul', 'params', 'parity_max_abs_diff',
                'inference', 'train', 'xla_flags', 'command', 'date'):
        assert key in saved[-1], key
    for mode in ('inference', 'train'):
        m = saved[-1][mode]
        for key in ('jax_images_per_s', 'torch_images_per_s', 'ratio', 'compile_s', 'flops', 'jax_flops_per_s',
                    'jax_fraction_of_peak', 'jax_memory_bytes', 'torch_peak_alloc_bytes', 'jax_times_s',
                    'torch_times_s'):
            assert key in m, (mode, key)
        assert m['flops'] > 0 and m['jax_images_per_s'] > 0 and m['torch_images_per_s'] > 0
        assert len(m['jax_times_s']) == len(m['torch_times_s']) == 1
    # The train step costs about 3x the forward pass (forward + backward).
    assert 2.0 < r['train']['flops'] / r['inference']['flops'] < 4.5
    assert r['parity_max_abs_diff'] <= 1e-4 * max(r['parity_output_scale'], 1.0)
    assert r['matmul']['peak'] > 0
    assert torch.get_num_threads() == threads
    assert 'ViT-testing' in bench.format_table(r)


def test_bench_rejects_unknown_model():
    from benchmarks import bench

    with pytest.raises(ValueError, match='Unknown benchmark model'):
        bench.run('ViT-Z/99', batch=1)


def test_model_table_vit_b16(capsys):
    from vit_jax.tools import model_table

    text = model_table.main(['--filter', '^ViT-B/16$', '--format', 'markdown'])
    assert text == capsys.readouterr().out.strip()
    lines = [line for line in text.splitlines() if line.startswith('| ViT-B/16 ')]
    assert len(lines) == 1
    cells = [c.strip() for c in lines[0].strip('|').split('|')]
    assert cells[1] == '86567656'  # Paper: 86M.
    gflops = float(cells[5])
    assert abs(gflops - 17.5) <= 0.05 * 17.5, gflops  # MACs = XLA flops / 2; DeiT: 17.6 GFLOPs.
    assert cells[6] == '17.6'


def test_model_table_csv_and_errors():
    from vit_jax.tools import model_table

    text = model_table.main(['--filter', '^ViT-testing$', '--format', 'csv'])
    head, row = text.splitlines()
    assert head.startswith('model,params,')
    assert re.match(r'ViT-testing,\d+,', row)
    with pytest.raises(SystemExit, match='No registered model'):
        model_table.main(['--filter', '^no-such-model$'])


def test_gpu_benchmark_smoke(tmp_path):
    """`python -m benchmarks.gpu --smoke` runs anywhere (a tiny ViT on the CPU here) and records every figure."""
    from benchmarks import gpu

    out = tmp_path / 'gpu.json'
    rows = gpu.main(['--smoke', '--attention', 'xla,cpu', '--out', str(out)])
    assert len(rows) == 2 and all('error' not in r for r in rows), rows
    for r in rows:
        for key in ('images_per_s', 'step_s', 'flops_per_step', 'mfu', 'compile_s', 'xla_memory_bytes', 'device',
                    'attention_resolved', 'date', 'command'):
            assert key in r, key
        assert r['flops_per_step'] > 0 and r['images_per_s'] > 0
    assert json.loads(out.read_text())[0]['model'] == 'ViT-testing'
    assert gpu.device_peak_tflops('NVIDIA H100 80GB HBM3') == 989.0
    assert gpu.device_peak_tflops('NVIDIA H100 PCIe') == 756.0


def test_input_pipeline_benchmark_tiny(tmp_path):
    from benchmarks import input_pipeline

    r = input_pipeline.main(['--images', '24', '--batch', '8', '--res', '64', '--batches', '2', '--warmup', '1'])
    assert r['images_per_s'] > 0 and r['examples'] == 24 and r['cores'] >= 1
