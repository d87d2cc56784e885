#!/usr/bin/env python
"""Helpers of ``benchmarks/gpu_check.sh``: ``prepare`` (data + option files), ``summarize`` (one table).

``prepare --mode gpu|cpu --out OUT`` builds x4 pairs from scikit-image's photographs
(:func:`d2csr.data.photo_pairs.build_photo_pairs`) and writes ``OUT/opts/train_{tf32,bf16,compiled}.yml``
from ``options/train_D2C_div_x4.yml`` (the paper's network and batch 4 x 96^2 on a GPU; a tiny network and
a few iterations with ``--mode cpu``, to try the script without a GPU). ``summarize --out OUT`` reads the
parts' outputs and prints (and writes ``OUT/summary.md`` / ``summary.json``) one table.
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER_X4_ITERS = 2.29e6
RUNS = {'tf32': dict(amp=None, compile=None), 'bf16': dict(amp='bf16', compile=None),
        'compiled': dict(amp='bf16', compile='reduce-overhead')}


def prepare(args):
    import yaml
    import d2csr  # noqa: F401  (BasicSR shim)
    from d2csr.utils.yaml_io import load_options
    from d2csr.data.photo_pairs import TRAIN_PHOTOS, build_photo_pairs

    out = Path(args.out).resolve()
    gpu = args.mode == 'gpu'
    data = Path(args.data).resolve()
    photos = [p for p in TRAIN_PHOTOS if p != 'coins']  # coins (303 px) is smaller than a 384 px HR crop
    build_photo_pairs(str(data), 4, train=photos, val=(), max_side=768)
    base = load_options(ROOT / 'options' / 'train_D2C_div_x4.yml')  # options files are data: the safe loader
    (out / 'opts').mkdir(parents=True, exist_ok=True)
    for run, extra in RUNS.items():
        opt = json.loads(json.dumps(base))
        opt['name'] = f'gpu_check_{run}' if gpu else f'gpu_check_cpu_{run}'
        opt['num_gpu'] = 1 if gpu else 0
        opt['datasets'] = {'train': {
            'name': 'photos_x4', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'train' / 'HR'),
            'dataroot_lq': str(data / 'train' / 'LR'), 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'},
            'gt_size': 384 if gpu else 64, 'use_hflip': True, 'use_rot': True,
            'num_worker_per_gpu': 6 if gpu else 0, 'batch_size_per_gpu': 4 if gpu else 2,
            'dataset_enlarge_ratio': 200, 'prefetch_mode': 'cuda' if gpu else None, 'pin_memory': gpu}}
        if not gpu:
            opt['network_g'].update(num_feat=16, num_group=1, num_block=1, squeeze_factor=4)
        train = opt['train']
        train.update(total_iter=args.iters, amp=extra['amp'], compile=extra['compile'])
        train['optim_g']['fused'] = True
        train['scheduler']['milestones'] = [10**9]
        train['divergence_opt']['alpha_schedule'] = None  # the triplet term on at every step
        opt['val'] = {'val_freq': 10**9, 'save_img': False}
        opt['logger'] = {'print_freq': max(args.iters // 6, 1), 'save_checkpoint_freq': 10**9,
                         'use_tb_logger': False, 'wandb': {'project': None, 'resume_id': None}}
        (out / 'opts' / f'train_{run}.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    print(f'data under {data}, option files under {out / "opts"}')


def _json(path):
    try:
        text = Path(path).read_text()
        return json.loads(text[text.index('{'):])
    except (OSError, ValueError):
        return None


def _train_log(name):
    logs = sorted((ROOT / 'experiments' / name).glob('train_*.log'))
    return logs[-1].read_text() if logs else ''


def summarize(args):
    out = Path(args.out)
    status = {}
    for line in (out / 'status.tsv').read_text().splitlines() if (out / 'status.tsv').exists() else []:
        name, rc, seconds = line.split('\t')
        status[name] = dict(rc=int(rc), seconds=float(seconds))
    rows, summary = [], {'status': status}

    def add(part, what, figure):
        st = status.get(part, {})
        rows.append((part, 'ok' if st.get('rc') == 0 else ('timeout' if st.get('rc') in (124, 137) else
                                                         f"rc={st.get('rc', 'n/a')}"),
                     f"{st.get('seconds', 0):.0f}", what, figure))

    tests = (out / 'tests.out').read_text() if (out / 'tests.out').exists() else ''
    found = re.findall(r'(\d+ (?:passed|failed|skipped|error)[^\n]*)', tests)
    add('tests', 'pytest tests/test_train_step.py (GPU tests)', found[-1] if found else '')

    steps = (_json(out / 'bench_steps.out') or {}).get('steps')
    summary['steps'] = steps
    for name, r in (steps or {}).get('rows', {}).items():
        kernel = '' if r['kernel_ms'] is None else f", kernels {r['kernel_ms']:.1f} ms, busy {r['gpu_busy']:.0%}"
        add('bench_steps', f"step {name} {r['batch']}x{r['patch']}^2",
            f"{r['wall_ms']:.1f} ms{kernel}, {r['launches_per_step']:.0f} launches, {r['of_limit']:.0%} of limit, "
            f"paper x4 {r['paper_x4_hours']:.1f} h")
    if not steps:
        add('bench_steps', 'training-step rows', 'no result')
    for part in ('bench_compiled',):
        res = (_json(out / f'{part}.out') or {}).get('steps')
        summary[part] = res
        for name, r in (res or {}).get('rows', {}).items():
            kernel = '' if r['kernel_ms'] is None else f", kernels {r['kernel_ms']:.1f} ms, busy {r['gpu_busy']:.0%}"
            add(part, f"step {name} compiled ({res['setting']['compile']})",
                f"{r['wall_ms']:.1f} ms{kernel}, {r['launches_per_step']:.0f} launches, paper x4 "
                f"{r['paper_x4_hours']:.1f} h")
        if not res:
            add(part, 'compiled training-step rows', 'no result')
    for dtype in ('tf32', 'bf16'):
        res = _json(out / f'infer_{dtype}.out') or {}
        summary[f'infer_{dtype}'] = res.get('rows')
        figure = ', '.join(f"{k} {v['infer_s'] * 1e3:.1f} ms ({v['infer_of_limit']:.0%})"
                           for k, v in (res.get('rows') or {}).items() if 'infer_s' in v)
        add(f'infer_{dtype}', f'inference rows ({dtype})', figure or 'no result')
    for run in RUNS:
        part = f'train_{run}'
        log = _train_log(f'gpu_check_{run}') or _train_log(f'gpu_check_cpu_{run}')
        lines = re.findall(r'iter:\s*([\d,]+).*?time \(data\): ([\d.]+) \(([\d.]+)\)\].*?l_branch: ([\d.e+-]+)', log)
        fell_back = 'running it eager' in log
        if lines:
            it, t, data_t, loss = lines[-1]
            it = it.strip(',')
            figure = (f"iter {it}: {float(t) * 1e3:.1f} ms/iter (data {float(data_t) * 1e3:.1f}), l_branch {loss}, "
                      f"paper x4 {float(t) * PAPER_X4_ITERS / 3600:.1f} h" +
                      (' [compile fell back]' if fell_back else ''))
            summary[part] = dict(iter=it, s_per_iter=float(t), data_s=float(data_t), l_branch=float(loss),
                                 compile_fell_back=fell_back)
        else:
            figure = 'no log line'
        add(part, f'd2csr/train.py {run}', figure)
    table = ['| part | status | s | what | figure |', '| --- | --- | ---: | --- | --- |']
    table += [f'| {" | ".join(r)} |' for r in rows]
    text = '\n'.join(table)
    print(text)
    (out / 'summary.md').write_text(text + '\n')
    (out / 'summary.json').write_text(json.dumps(summary, indent=1, default=str))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('command', choices=('prepare', 'summarize'))
    parser.add_argument('--out', default='gpu_out')
    parser.add_argument('--mode', choices=('gpu', 'cpu'), default='gpu')
    parser.add_argument('--data', default='/tmp/d2c_gpu_check_data')
    parser.add_argument('--iters', type=int, default=300)
    args = parser.parse_args(argv)
    prepare(args) if args.command == 'prepare' else summarize(args)


if __name__ == '__main__':
    main()
