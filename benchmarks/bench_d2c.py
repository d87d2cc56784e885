#!/usr/bin/env python
"""Speed of D2C-SR against the machine's conv limit, the straightforward implementation and BasicSR's RCAN.

In one run, for the default D2C-SR (paper: L=2, C=2, G=2, B=4, 64 features) at ``--scale``:

- the *limit*, per precision (``--dtype``, e.g. ``fp32,bf16``): the measured GFLOP/s of one 64-channel 3x3
  conv on a ``(batch, 64, size, size)`` input in that precision (bf16 / fp16: input and weights in it), the
  better of NCHW and channels-last;
- per implementation and precision (rows): parameters, FLOPs per image / per training step (counted with
  ``torch.utils.flop_counter.FlopCounterMode``, not estimated), inference time,
  achieved GFLOP/s and its share of the limit, a training step's time (forward, divergence and
  convergence losses, backward, Adam; ``--train-batch`` x ``--train-patch`` LR patches) and share, and
  peak tensor memory (every tensor allocated during the call, tracked at the dispatcher; on CUDA
  ``torch.cuda.max_memory_allocated``);
- ratios: D2C-SR's speed-up over its NCHW layout and its time against RCAN.

Rows: ``channels_last`` (``D2CSR`` as built: weights and features channels-last), ``nchw`` (the same
weights after ``set_memory_format(torch.contiguous_format)``, PyTorch's default layout), ``rcan`` (BasicSR's
``RCAN`` with groups and blocks chosen to match D2C-SR's parameter count, channels-last) and, with
``--compile``, ``compiled`` (``torch.compile`` of the channels-last model). Precisions after the first
add rows named ``<row>_<dtype>`` (inference under ``torch.autocast``, weights fp32, outputs fp32), each
compared with the limit measured in its own precision. Training rows are fp32.

Timing (:func:`time_rows`): each row runs warm-up calls, then its timed calls back to back, in two passes
over the rows (so a change of load hits all rows alike); the table shows the best call and the median.
The machine's load average (which counts this benchmark's own threads) is printed with the figures:
re-run on a quiet machine for figures to quote.

Examples::

    python benchmarks/bench_d2c.py                        # CPU, x4, 1x3x64x64 inference, 4x3x48x48 training
    python benchmarks/bench_d2c.py --json > speed.json    # the same, as JSON
    python benchmarks/bench_d2c.py --dtype fp32,bf16 --skip-train           # CPU, fp32 and bf16 inference rows
    python benchmarks/bench_d2c.py --device cuda --size 256 --dtype fp32,bf16   # GPU, TF32 and bf16 rows
    python benchmarks/bench_d2c.py --smoke                # tiny networks, one repeat (the tests run this)
"""
import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import d2csr  # noqa: E402,F401  (BasicSR shim, registries)
from basicsr.archs.rcan_arch import RCAN  # noqa: E402
from d2csr.archs import D2CSR  # noqa: E402
from d2csr.losses.d2c_loss import ConvergenceLoss, DivergenceLoss  # noqa: E402

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
CLOCK = [time.perf_counter]  # --clock cpu: time.thread_time
CL = torch.channels_last


# --------------------------------------------------------------------------------------------------
# measuring tools
def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def load_average():
    try:
        return tuple(float(v) for v in Path('/proc/loadavg').read_text().split()[:3])
    except OSError:
        return None


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensors allocated while active (tensors that existed before are not counted)."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def _free(self, key):
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.layout == torch.strided}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live and key not in inputs:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def peak_memory(fn, device):
    """Peak bytes of tensor memory ``fn()`` allocates beyond what already exists."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with PeakTensorMemory() as tracker:
        fn()
        return tracker.peak


def count_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def time_rows(fns, device, warmup, repeats, rounds=2, clock=time.perf_counter):
    """``{row: [seconds per call]}``: ``repeats`` timed calls per row, in ``rounds`` passes over the rows.

    In each pass a row runs its calls back to back (steady state: its weights and buffers warm in the
    caches, as when a model serves many images) after warm-up calls (``warmup`` in the first pass, one
    later); the passes spread every row over the run, so a change of load hits all rows alike.
    """
    times = {name: [] for name in fns}
    rounds = max(1, min(rounds, repeats))
    for r in range(rounds):
        count = repeats // rounds + (1 if r < repeats % rounds else 0)
        for name, fn in fns.items():
            for _ in range(warmup if r == 0 else min(warmup, 1)):
                fn()
            for _ in range(count):
                synchronize(device)
                start = clock()
                fn()
                synchronize(device)
                times[name].append(clock() - start)
    return times


def conv_limit(batch, size, channels, device, dtype, warmup, repeats):
    """GFLOP/s of one ``channels``-channel 3x3 conv in ``dtype`` (input and weights), NCHW and channels-last."""
    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    conv = torch.nn.Conv2d(channels, channels, 3, 1, 1).to(device, dtype)
    conv_cl = torch.nn.Conv2d(channels, channels, 3, 1, 1).to(device, dtype).to(memory_format=CL)
    x_cl = x.contiguous(memory_format=CL)
    flops = 2 * channels * channels * 9 * size * size * batch

    def run(m, inp):
        with torch.inference_mode():
            return m(inp)

    # one conv is short (about 1.5 ms on 2 CPU cores): many samples, the best of them
    times = time_rows({'nchw': lambda: run(conv, x), 'channels_last': lambda: run(conv_cl, x_cl)}, device,
                      max(warmup, 3), max(repeats * 5, 1), clock=CLOCK[0])
    gflops = {name: flops / min(t) / 1e9 for name, t in times.items()}
    return dict(gflops, limit=max(gflops.values()), best_layout=max(gflops, key=gflops.get),
                median=max(flops / statistics.median(t) / 1e9 for t in times.values()))


# --------------------------------------------------------------------------------------------------
# the models and what one call of each row does
def rcan_like(d2c_params, num_feat, squeeze_factor, scale):
    """BasicSR RCAN (``num_group``, ``num_block``) whose parameter count is closest to ``d2c_params``."""

    def params(g, b):
        return sum(p.numel() for p in RCAN(3, 3, num_feat, g, b, squeeze_factor, scale).parameters())

    p11, p12, p21 = params(1, 1), params(1, 2), params(2, 1)
    per_block, per_group = p12 - p11, p21 - p11  # a group adds one block and its conv
    fixed = p11 - per_group
    best = min(((g, b) for g in range(1, 13) for b in range(1, 41)),
               key=lambda gb: (abs(fixed + gb[0] * (per_group + (gb[1] - 1) * per_block) - d2c_params), gb))
    return RCAN(3, 3, num_feat, best[0], best[1], squeeze_factor, scale, img_range=1.0), best


def d2c_inference(net, dtype, device):
    """One inference call of ``net`` (fp32, or under ``torch.autocast`` for bf16 / fp16; output fp32)."""
    autocast = dtype != torch.float32

    def run(x):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return net(x)

    return run


def d2c_train_step(net, div_loss, conv_loss):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step(lq, gt):
        optimizer.zero_grad(set_to_none=True)
        branches = net.forward_branches(lq)
        sr, _ = net.fuse(branches)
        loss = div_loss(branches, gt) + conv_loss(sr, gt)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def plain_inference(net, channels_last, dtype, device):
    autocast = dtype != torch.float32

    def run(x):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return net(x.contiguous(memory_format=CL) if channels_last else x)

    return run


def plain_train_step(net, channels_last):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step(lq, gt):
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(net(lq.contiguous(memory_format=CL) if channels_last else lq), gt)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


# --------------------------------------------------------------------------------------------------
def run_benchmark(args):
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('bench_d2c: --device cuda but torch.cuda.is_available() is False; use --device cpu')
    dtypes = parse_dtypes(args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == 'cpu':
        if device.type != 'cpu' or torch.get_num_threads() != 1:
            raise SystemExit('bench_d2c: --clock cpu measures this thread\'s CPU time: it needs --device cpu and '
                             '--threads 1')
        CLOCK[0] = time.thread_time
    torch.manual_seed(0)
    if args.smoke:
        net_opt = dict(num_feat=16, num_group=1, num_block=1, squeeze_factor=4, fusion_feat=16)
        args.size, args.batch, args.train_batch, args.train_patch = 8, 1, 2, 8
        args.warmup, args.repeats, args.train_repeats = 0, 1, 1
    else:
        net_opt = {}
    net_opt.update(upscale=args.scale, depth=args.depth, width=args.width)
    num_feat = net_opt.get('num_feat', 64)
    squeeze = net_opt.get('squeeze_factor', 16)

    load_before = load_average()
    limits = {name: conv_limit(args.batch, args.size, 64, device, DTYPES[name], args.warmup, args.repeats)
              for name in dtypes}

    # models: one D2C-SR as built (channels-last), the same weights in NCHW, and a comparable RCAN
    d2c = D2CSR(**net_opt).to(device)
    d2c_nchw = D2CSR(**net_opt).set_memory_format(torch.contiguous_format).to(device)
    d2c_nchw.load_state_dict(d2c.state_dict())
    d2c_params = sum(p.numel() for p in d2c.parameters())
    rcan, (rcan_groups, rcan_blocks) = rcan_like(d2c_params, num_feat, squeeze, args.scale)
    rcan = rcan.to(device).to(memory_format=CL)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    lq = torch.rand(args.train_batch, 3, args.train_patch, args.train_patch, device=device)
    gt = torch.rand(args.train_batch, 3, args.train_patch * args.scale, args.train_patch * args.scale, device=device)
    margins = [5e-5] * (args.depth - 1) + [2e-5]  # the authors' margins: cousins, then siblings
    div_loss = DivergenceLoss(alpha=2e-5, margins=margins, depth=args.depth, width=args.width).to(device)
    conv_loss = ConvergenceLoss().to(device)

    models = {'channels_last': d2c, 'nchw': d2c_nchw, 'rcan': rcan}
    if args.compile:
        models['compiled'] = torch.compile(d2c)
    rows = {}  # name -> (model name, dtype name)
    for i, dname in enumerate(dtypes):
        for mname in models:
            rows[mname if i == 0 else f'{mname}_{dname}'] = (mname, dname)

    def infer_fn(name):
        mname, dname = rows[name]
        if mname == 'rcan':
            return plain_inference(rcan, True, DTYPES[dname], device)
        return d2c_inference(models[mname], DTYPES[dname], device)

    # the two layouts compute the same function (fp32; the tests check it everywhere)
    with torch.inference_mode():
        max_abs_diff = (d2c(x) - d2c_nchw(x)).abs().max().item()

    with torch.inference_mode():  # on the NCHW model: its convs are the plain ones (the channels-last model's
        flops_d2c = count_flops(lambda: d2c_nchw(x))  # few-output convs count their 1x1 tap conv's padding)
        flops_rcan = count_flops(lambda: rcan(x))
    infer_flops = {name: (flops_rcan if rows[name][0] == 'rcan' else flops_d2c) for name in rows}

    params = {m: sum(p.numel() for p in models[m].parameters()) for m in ('channels_last', 'rcan')}
    results = {name: dict(params=params['rcan' if m == 'rcan' else 'channels_last'],
                          dtype=d, infer_flops_per_image=infer_flops[name] / args.batch)
               for name, (m, d) in rows.items()}
    fns = {name: infer_fn(name) for name in rows}
    times = time_rows({name: (lambda f=fns[name]: f(x)) for name in rows}, device, args.warmup, args.repeats,
                      clock=CLOCK[0])
    for name, t in times.items():
        limit = limits[rows[name][1]]['limit']
        results[name].update(infer_s=min(t), infer_s_median=statistics.median(t),
                             infer_gflops=infer_flops[name] / min(t) / 1e9, limit_gflops=limit,
                             infer_of_limit=infer_flops[name] / min(t) / 1e9 / limit)
        results[name]['infer_peak_bytes'] = peak_memory(lambda f=fns[name]: f(x), device)

    train_rows = [name for name in rows if rows[name][1] == dtypes[0] and rows[name][0] != 'compiled']
    if not args.skip_train:
        state = {k: v.clone() for k, v in d2c.state_dict().items()}
        steps = {}
        for name in train_rows:
            mname = rows[name][0]
            if mname == 'rcan':
                steps[name] = plain_train_step(rcan, True)
            else:
                steps[name] = d2c_train_step(models[mname], div_loss, conv_loss)
        flops_train_d2c = count_flops(lambda: steps['channels_last'](lq, gt))
        flops_train_rcan = count_flops(lambda: steps['rcan'](lq, gt))
        train_times = time_rows({name: (lambda s=s: s(lq, gt)) for name, s in steps.items()}, device,
                                max(args.warmup - 1, 1) if not args.smoke else 0, args.train_repeats, clock=CLOCK[0])
        limit = limits[dtypes[0]]['limit']
        for name, t in train_times.items():
            flops = flops_train_rcan if name == 'rcan' else flops_train_d2c
            results[name].update(train_flops_per_step=flops, train_s=min(t), train_s_median=statistics.median(t),
                                 train_gflops=flops / min(t) / 1e9,
                                 train_of_limit=flops / min(t) / 1e9 / limit)
            results[name]['train_peak_bytes'] = peak_memory(lambda s=steps[name]: s(lq, gt), device)
        d2c.load_state_dict(state)
        d2c_nchw.load_state_dict(state)

    main = results['channels_last']
    ratios = {
        'infer_speedup_vs_nchw': results['nchw']['infer_s'] / main['infer_s'],
        'infer_time_vs_rcan': main['infer_s'] / results['rcan']['infer_s'],
        'infer_of_limit': main['infer_of_limit'],
    }
    for dname in dtypes[1:]:
        ratios[f'infer_{dname}_of_limit'] = results[f'channels_last_{dname}']['infer_of_limit']
        ratios[f'infer_{dname}_speedup_vs_{dtypes[0]}'] = main['infer_s'] / results[f'channels_last_{dname}']['infer_s']
    if not args.skip_train:
        ratios.update({
            'train_speedup_vs_nchw': results['nchw']['train_s'] / main['train_s'],
            'train_time_vs_rcan': main['train_s'] / results['rcan']['train_s'],
            'train_of_limit': main['train_of_limit'],
        })
    return dict(
        machine=dict(device=str(device), name=(torch.cuda.get_device_name(device) if device.type == 'cuda'
                                                else cpu_name()),
                     threads=torch.get_num_threads(), torch=torch.__version__, load_before=load_before,
                     clock=args.clock,
                     load_after=load_average(), cpu_flags=cpu_flags(),
                     malloc_env={k: v for k, v in os.environ.items() if k.startswith('MALLOC_') or k == 'LD_PRELOAD'}),
        setting=dict(scale=args.scale, size=args.size, batch=args.batch, train_batch=args.train_batch,
                     train_patch=args.train_patch, dtype=dtypes[0], dtypes=dtypes, depth=args.depth,
                     width=args.width, repeats=args.repeats, train_repeats=args.train_repeats, smoke=args.smoke,
                     rcan_groups=rcan_groups, rcan_blocks=rcan_blocks),
        conv_limit_gflops=limits[dtypes[0]], conv_limits_gflops=limits,
        nchw_vs_channels_last_max_abs_diff=max_abs_diff, rows=results, ratios=ratios)


def parse_dtypes(value):
    dtypes = [v.strip() for v in value.split(',') if v.strip()]
    unknown = [v for v in dtypes if v not in DTYPES]
    if not dtypes or unknown:
        raise SystemExit(f'bench_d2c: --dtype takes a comma-separated list of {sorted(DTYPES)}, got {value!r}')
    return dtypes


def cpu_name():
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """The CPU's bf16 / AMX instruction flags (Linux), which decide what bf16 can gain on a CPU."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return None
    flags = next((line.split(':', 1)[1].split() for line in text.splitlines() if line.startswith('flags')), [])
    return sorted(f for f in set(flags) if f in ('avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile', 'avx512_fp16'))


def print_table(res):
    m, s = res['machine'], res['setting']
    print(f"device {m['device']} ({m['name']}), {m['threads']} threads, {m['clock']} clock, torch {m['torch']}, "
          f"CPU flags {m['cpu_flags']}, load average before {m['load_before']} after {m['load_after']}")
    print(f"x{s['scale']}, inference {s['batch']}x3x{s['size']}x{s['size']} ({', '.join(s['dtypes'])}), training "
          f"{s['train_batch']}x3x{s['train_patch']}x{s['train_patch']} ({s['dtypes'][0]}); best / median of "
          f"{s['repeats']} (inference) and {s['train_repeats']} (training) calls per row, in two passes")
    for name, lim in res['conv_limits_gflops'].items():
        print(f"limit ({name}): 64-ch 3x3 conv on {s['batch']}x64x{s['size']}x{s['size']}: {lim['nchw']:.1f} "
              f"GFLOP/s NCHW, {lim['channels_last']:.1f} channels-last -> {lim['limit']:.1f} GFLOP/s "
              f"(median {lim['median']:.1f})")
    print(f"nchw vs channels_last, max |SR difference| on this input: {res['nchw_vs_channels_last_max_abs_diff']:.2e}")
    header = (f"{'row':<20}{'params':>11}{'GFLOP/img':>10}{'infer s':>9}{'(med)':>8}{'GFLOP/s':>9}{'limit':>7}"
              f"{'peak MB':>9}")
    train = any('train_s' in r for r in res['rows'].values())
    if train:
        header += f"{'GFLOP/step':>11}{'train s':>9}{'(med)':>8}{'GFLOP/s':>9}{'limit':>7}{'peak MB':>9}"
    print(header)
    for name, r in res['rows'].items():
        line = (f"{name:<20}{r['params']:>11,d}{r['infer_flops_per_image'] / 1e9:>10.2f}{r['infer_s']:>9.3f}"
                f"{r['infer_s_median']:>8.3f}{r['infer_gflops']:>9.1f}{r['infer_of_limit']:>7.0%}"
                f"{r['infer_peak_bytes'] / 2**20:>9.1f}")
        if 'train_s' in r:
            line += (f"{r['train_flops_per_step'] / 1e9:>11.1f}{r['train_s']:>9.3f}{r['train_s_median']:>8.3f}"
                     f"{r['train_gflops']:>9.1f}{r['train_of_limit']:>7.0%}{r['train_peak_bytes'] / 2**20:>9.1f}")
        print(line)
    print(f"rcan: BasicSR RCAN with {s['rcan_groups']} groups x {s['rcan_blocks']} blocks (closest parameter count)")
    print('ratios: ' + ', '.join(f'{k} {v:.2f}' for k, v in res['ratios'].items()))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--scale', type=int, default=4, choices=(2, 3, 4, 8))
    parser.add_argument('--size', type=int, default=64, help='LR side of the inference input (default 64)')
    parser.add_argument('--batch', type=int, default=1, help='inference batch (default 1)')
    parser.add_argument('--train-batch', type=int, default=4, help='training batch (default 4)')
    parser.add_argument('--train-patch', type=int, default=48, help='training LR patch side (default 48)')
    parser.add_argument('--depth', type=int, default=2, help='tree depth L (default 2)')
    parser.add_argument('--width', type=int, default=2, help='children per node C (default 2)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (default cpu)")
    parser.add_argument('--dtype', default='fp32',
                        help='inference precisions, comma-separated (fp32, bf16, fp16; default fp32): the first '
                             'gives the plain rows and the training rows, each further one <row>_<dtype> rows '
                             'under torch.autocast, compared with its own limit')
    parser.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (default: leave as is)')
    parser.add_argument('--warmup', type=int, default=3, help='warm-up calls per row (default 3)')
    parser.add_argument('--repeats', type=int, default=20, help='timed inference rounds (default 20)')
    parser.add_argument('--train-repeats', type=int, default=4, help='timed training rounds (default 4)')
    parser.add_argument('--skip-train', action='store_true', help='inference only')
    parser.add_argument('--clock', default='wall', choices=('wall', 'cpu'),
                        help='wall (default) or cpu: the CPU time of this thread (with --threads 1 on a CPU), '
                             'much less disturbed by other jobs on a shared machine')
    parser.add_argument('--compile', action='store_true', help='add a torch.compile row (compiles first)')
    parser.add_argument('--smoke', action='store_true', help='tiny networks and sizes, one round (for tests)')
    parser.add_argument('--json', action='store_true', help='print JSON instead of the table')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    res = run_benchmark(args)
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    else:
        print_table(res)
    return res


if __name__ == '__main__':
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    main()
