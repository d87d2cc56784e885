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
# torch, BasicSR and d2csr are imported where they are used, after the arguments: --help answers at once

DTYPES = ('fp32', 'bf16', 'fp16')  # the precisions of --dtype / --train-dtype (torch_dtype: their torch types)
CLOCK = [time.perf_counter]  # --clock cpu: time.thread_time


def torch_dtype(name):
    """The torch dtype of a ``--dtype`` name (``'fp32'``, ``'bf16'``, ``'fp16'``)."""
    import torch

    return {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}[name]


# --------------------------------------------------------------------------------------------------
# measuring tools
def synchronize(device):
    import torch

    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def load_average():
    try:
        return tuple(float(v) for v in Path('/proc/loadavg').read_text().split()[:3])
    except OSError:
        return None


def peak_tensor_memory():
    """A ``TorchDispatchMode`` whose ``peak`` is the most bytes of tensors allocated while it is active (tensors
    that existed before are not counted). The class is made here, on first use, as torch is imported after the
    arguments."""
    import torch
    from torch.utils import _pytree as pytree
    from torch.utils._python_dispatch import TorchDispatchMode

    class PeakTensorMemory(TorchDispatchMode):
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

    return PeakTensorMemory()


def peak_memory(fn, device):
    """Peak bytes of tensor memory ``fn()`` allocates beyond what already exists."""
    import torch

    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with peak_tensor_memory() as tracker:
        fn()
        return tracker.peak


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

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
    import torch

    x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    conv = torch.nn.Conv2d(channels, channels, 3, 1, 1).to(device, dtype)
    conv_cl = torch.nn.Conv2d(channels, channels, 3, 1, 1).to(device, dtype).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
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
    from basicsr.archs.rcan_arch import RCAN


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
    import torch

    autocast = dtype != torch.float32

    def run(x):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return net(x)

    return run


def d2c_train_step(net, div_loss, conv_loss):
    import torch

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
    import torch

    autocast = dtype != torch.float32

    def run(x):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return net(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    return run


def plain_train_step(net, channels_last):
    import torch


    from torch.nn import functional as F

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step(lq, gt):
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(net(lq.contiguous(memory_format=torch.channels_last) if channels_last else lq), gt)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


# --------------------------------------------------------------------------------------------------
def run_benchmark(args):
    import torch

    from d2csr.archs import D2CSR
    from d2csr.losses.d2csr_losses import ConvergenceLoss, DivergenceLoss

    device = torch.device(args.device)  # checked by main
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
    limits = {name: conv_limit(args.batch, args.size, 64, device, torch_dtype(name), args.warmup, args.repeats)
              for name in dtypes}

    # models: one D2C-SR as built (channels-last), the same weights in NCHW, and a comparable RCAN
    d2c = D2CSR(**net_opt).to(device)
    d2c_nchw = D2CSR(**net_opt).set_memory_format(torch.contiguous_format).to(device)
    d2c_nchw.load_state_dict(d2c.state_dict())
    d2c_params = sum(p.numel() for p in d2c.parameters())
    rcan, (rcan_groups, rcan_blocks) = rcan_like(d2c_params, num_feat, squeeze, args.scale)
    rcan = rcan.to(device).to(memory_format=torch.channels_last)
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
            return plain_inference(rcan, True, torch_dtype(dname), device)
        return d2c_inference(models[mname], torch_dtype(dname), device)

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


# --------------------------------------------------------------------------------------------------
# training steps as users run them: D2CModel.optimize_parameters from the option files
PAPER_X4_ITERS = 2.28e6  # the paper's x4 schedule: 20,000 of the authors' epochs of 459 // 4 = 114 iterations (batch 4)
STEP_OPTION_FILES = {'divergence': 'options/train_D2C_div_x4.yml', 'convergence': 'options/train_D2C_conv_x4.yml'}
SMOKE_NET = dict(num_feat=16, num_group=1, num_block=1, squeeze_factor=4, fusion_feat=16)


def model_from_options(path, device, workdir, net_opt=None, amp=None, compile_mode=None, optim=None,
                       compile_backend=None):
    """A :class:`~d2csr.models.D2CModel` built in this process from an option file, as ``d2csr/train.py``
    builds it (no data sets, no launcher). The convergence stage gets a fresh stage-1 checkpoint."""
    import torch
    from basicsr.models import build_model

    from d2csr.utils.yaml_io import load_options

    root = Path(__file__).resolve().parents[1]
    opt = load_options(root / path)  # options files are data: d2csr's safe loader
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False,
               num_gpu=1 if device.type == 'cuda' else 0)
    opt['network_g'].update(net_opt or {})
    train = opt['train']
    train.update(amp=amp, compile=compile_mode)
    if compile_backend:
        train['compile_backend'] = compile_backend
    train['ema_decay'] = 0
    for key in ('optim_g', 'optim_c'):
        if key in train and optim in ('fused', 'foreach'):
            train[key][optim] = True
    workdir = Path(workdir)
    for key in ('models', 'training_states'):
        (workdir / key).mkdir(parents=True, exist_ok=True)
        opt['path'][key] = str(workdir / key)
    opt['path']['resume_state'] = None
    if train['stage'] == 'convergence':
        from basicsr.archs import build_network

        stage1 = workdir / 'stage1.pth'
        torch.save({'params': build_network(dict(opt['network_g'])).state_dict()}, stage1)
        opt['path']['pretrain_network_g'] = str(stage1)
    for dataset in opt['datasets'].values():
        dataset['scale'] = opt['scale']
    return build_model(opt)


def model_step(model, lq, gt, log_lines=False):
    """One ``optimize_parameters`` per call, iterations counted on from where the triplet term is on.

    ``log_lines``: every call is an iteration BasicSR logs (a multiple of ``logger: print_freq``), where the
    divergence stage also computes ``trip_grad_ratio`` (:meth:`D2CModel._triplet_gradient_ratio`); otherwise the
    iterations avoid those multiples, so the rows time the plain step."""
    schedule = model.cri_div.schedule if model.cri_div is not None else None
    freq = model.opt['logger']['print_freq']
    first = freq if log_lines else 1
    while schedule is not None and schedule(first) == 0 and first < 10**7:  # the triplet term on, as in its windows
        first += freq if log_lines else 1
    state = {'iter': first}
    data = {'lq': lq, 'gt': gt}

    def step():
        model.feed_data(data)
        model.optimize_parameters(state['iter'])
        state['iter'] += freq if log_lines else (2 if (state['iter'] + 1) % freq == 0 else 1)

    return step


def hand_written_step(net, lq, gt, div_loss, dtype):
    """The bare stage-1 step: ``net(lq, mode='branches')``, ``DivergenceLoss.terms``, fused Adam, no guard."""
    import torch

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, fused=True)
    alpha = torch.full((), 2e-5, device=lq.device)
    autocast = dtype != torch.float32

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(lq.device.type, dtype=dtype, enabled=autocast):
            branches = net(lq, mode='branches')
        div_loss.terms([b.float() for b in branches], gt, alpha=alpha)['l_div'].backward()
        optimizer.step()

    return step


def profile_steps(step, device, steps):
    """``(wall s, summed kernel s or None, kernel launches or top-level ops)`` per step, from ``torch.profiler``.

    On CUDA: the GPU kernels' (and copies') summed duration and count; on CPU: the count of top-level
    ``aten::`` ops (each a dispatch from Python or the autograd engine) and no kernel time.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    step()
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall = (time.perf_counter() - start) / steps
    events = prof.events()
    if device.type == 'cuda':
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        kernel_s = sum(e.time_range.elapsed_us() for e in kernels) / 1e6 / steps
        return wall, kernel_s, len(kernels) / steps
    ops = [e for e in events if e.name.startswith('aten::') and
           (e.cpu_parent is None or not e.cpu_parent.name.startswith('aten::'))]
    return wall, None, len(ops) / steps


def run_step_rows(args, device):
    """Rows: ``optimize_parameters`` of both stages from the option files (stage 1 also at a log line, where it
    computes ``trip_grad_ratio``: row ``divergence_log_line``, its extra cost in ``grad_ratio_ms`` and, spread over
    ``logger: print_freq`` iterations, ``grad_ratio_share``) and the hand-written step, per
    training dtype in ``--train-dtype``; each with its time, profile, FLOPs, limit in its dtype, hours for the
    paper's x4 schedule."""
    import tempfile

    import torch

    from d2csr.archs import D2CSR
    from d2csr.losses.d2csr_losses import DivergenceLoss

    net_opt = dict(SMOKE_NET) if args.smoke else {}
    batch, patch, scale = args.train_batch, args.train_patch, 4
    lq = torch.rand(batch, 3, patch, patch, device=device)
    gt = torch.rand(batch, 3, patch * scale, patch * scale, device=device)
    rows, limits = {}, {}
    print_freq = None
    for dtype_name in args.train_dtype.split(','):
        dtype_name = dtype_name.strip()
        dtype = torch_dtype(dtype_name)
        label = 'tf32' if dtype == torch.float32 and device.type == 'cuda' else dtype_name
        limits[label] = conv_limit(batch, patch, 64, device, dtype, args.warmup, max(args.train_repeats, 1))
        amp = None if dtype == torch.float32 else dtype_name
        with tempfile.TemporaryDirectory() as workdir:
            fns = {}
            for stage, path in STEP_OPTION_FILES.items():
                model = model_from_options(path, device, Path(workdir) / stage, net_opt, amp, args.train_compile,
                                           args.optim, args.compile_backend)
                fns[f'{stage}_{label}'] = (model, model_step(model, lq, gt))
                if stage == 'divergence':  # the same step at a log line, with the trip_grad_ratio pass
                    model = model_from_options(path, device, Path(workdir) / 'log_line', net_opt, amp,
                                               args.train_compile, args.optim, args.compile_backend)
                    fns[f'{stage}_log_line_{label}'] = (model, model_step(model, lq, gt, log_lines=True))
            net = D2CSR(**dict(net_opt, upscale=scale)).to(device).to(memory_format=torch.channels_last)
            div_loss = DivergenceLoss(alpha=2e-5, margins=[5e-5, 2e-5]).to(device)
            fns[f'hand_written_{label}'] = (net, hand_written_step(net, lq, gt, div_loss, dtype))
            print_freq = fns[f'divergence_{label}'][0].opt['logger']['print_freq']
            warmup = 1 if args.smoke else max(args.warmup, 3 if args.train_compile else 1)
            times = time_rows({k: f for k, (_, f) in fns.items()}, device, warmup, args.train_repeats)
            for name, (_, fn) in fns.items():
                flops = count_flops(fn)
                wall, kernel_s, launches = profile_steps(fn, device, 1 if args.smoke else args.profile_steps)
                best = min(times[name])
                rows[name] = dict(dtype=label, batch=batch, patch=patch, wall_ms=best * 1e3,
                                  wall_ms_median=statistics.median(times[name]) * 1e3,
                                  profiled_wall_ms=wall * 1e3,
                                  kernel_ms=None if kernel_s is None else kernel_s * 1e3,
                                  gpu_busy=None if kernel_s is None else kernel_s / wall,
                                  launches_per_step=launches, gflop_per_step=flops / 1e9,
                                  gflops=flops / best / 1e9, of_limit=flops / best / 1e9 / limits[label]['limit'],
                                  paper_x4_hours=best * PAPER_X4_ITERS / 3600)
            del fns
            gc.collect()
    for label in limits:
        plain, line = rows.get(f'divergence_{label}'), rows.get(f'divergence_log_line_{label}')
        if plain and line:  # trip_grad_ratio: its cost at a log line, and spread over logger: print_freq iterations
            extra = line['wall_ms'] - plain['wall_ms']
            line['grad_ratio_ms'] = extra
            line['grad_ratio_share'] = extra / print_freq / plain['wall_ms']
    return dict(setting=dict(train_batch=batch, train_patch=patch, train_dtype=args.train_dtype, optim=args.optim,
                             compile=args.train_compile, option_files=STEP_OPTION_FILES,
                             tf32=device.type == 'cuda' and torch.backends.cuda.matmul.allow_tf32),
                limits_gflops={k: v['limit'] for k, v in limits.items()}, rows=rows)


def print_step_table(res):
    s = res['setting']
    print(f"\ntraining steps, {s['train_batch']}x3x{s['train_patch']}^2 LR (x4), optimizer {s['optim']}, compile "
          f"{s['compile']}: D2CModel.optimize_parameters from {s['option_files']['divergence']} / "
          f"{s['option_files']['convergence']}, and the hand-written stage-1 step")
    print('limits (64-ch 3x3 conv at the training size, GFLOP/s): ' +
          ', '.join(f'{k} {v:.1f}' for k, v in res['limits_gflops'].items()))
    print(f"{'row':<22}{'wall ms':>9}{'(med)':>9}{'kernel ms':>10}{'busy':>6}{'launches':>9}{'GFLOP':>8}"
          f"{'GFLOP/s':>9}{'limit':>7}{'paper x4 h':>11}")
    for name, r in res['rows'].items():
        kernel = '-' if r['kernel_ms'] is None else f"{r['kernel_ms']:.1f}"
        busy = '-' if r['gpu_busy'] is None else f"{r['gpu_busy']:.0%}"
        print(f"{name:<22}{r['wall_ms']:>9.1f}{r['wall_ms_median']:>9.1f}{kernel:>10}{busy:>6}"
              f"{r['launches_per_step']:>9.0f}{r['gflop_per_step']:>8.1f}{r['gflops']:>9.1f}{r['of_limit']:>7.0%}"
              f"{r['paper_x4_hours']:>11.1f}")
    for name, r in res['rows'].items():
        if 'grad_ratio_ms' in r:
            print(f"{name}: the trip_grad_ratio pass adds {r['grad_ratio_ms']:.1f} ms at a log line, "
                  f"{r['grad_ratio_share']:.2%} of a step spread over logger: print_freq iterations "
                  "(train: log_grad_ratio: false: none)")
    print('(launches: GPU kernels per step on CUDA, top-level aten ops on CPU; paper x4 h: '
          f'{PAPER_X4_ITERS / 1e6:.2f} M '
          'iterations at this row\'s best time, meaningful at batch 4 x 96^2)')


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
    steps = parser.add_argument_group('training-step rows (D2CModel.optimize_parameters from the option files)')
    steps.add_argument('--steps', choices=('on', 'off', 'only'), default='on',
                       help="the training-step rows: 'only' skips the inference and hand-written-model rows")
    steps.add_argument('--train-dtype', default='fp32',
                       help="comma list of fp32 (TF32 on CUDA), bf16, fp16: train:amp of each row (default fp32)")
    steps.add_argument('--optim', choices=('fused', 'foreach', 'file'), default='fused',
                       help="optim_g: fused: true / foreach: true, or as in the option file (default fused)")
    steps.add_argument('--train-compile', default=None, help='train:compile mode of the rows (default eager)')
    steps.add_argument('--compile-backend', default=None, help='train:compile_backend (default inductor)')
    steps.add_argument('--profile-steps', type=int, default=5, help='steps under torch.profiler per row (default 5)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    import d2csr  # noqa: F401  (BasicSR shim, registries)
    from d2csr.utils import device_from_flag

    device = device_from_flag(args.device)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 rows are TF32
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.train_batch, args.train_patch, args.warmup, args.train_repeats = 2, 8, 0, 1
    res = run_benchmark(args) if args.steps != 'only' else {}
    if args.steps != 'off' and not args.skip_train:
        res['steps'] = run_step_rows(args, device)
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    else:
        if args.steps != 'only':
            print_table(res)
        if 'steps' in res:
            print_step_table(res['steps'])
    return res


if __name__ == '__main__':
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')
    main()
