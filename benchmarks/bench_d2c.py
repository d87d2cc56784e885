#!/usr/bin/env python
"""Speed of D2C-SR against the machine's conv limit, the straightforward implementation and BasicSR's RCAN.

In one run, for the default D2C-SR (paper: L=2, C=2, G=2, B=4, 64 features) at ``--scale``:

- the *limit*: the measured GFLOP/s of one 64-channel 3x3 conv on a ``(batch, 64, size, size)`` input,
  the better of NCHW and channels-last;
- per implementation (rows): parameters, FLOPs per image / per training step (counted with
  ``torch.utils.flop_counter.FlopCounterMode`` on the reference path, not estimated), inference time,
  achieved GFLOP/s and its share of the limit, a training step's time (forward, divergence and
  convergence losses, backward, Adam; ``--train-batch`` x ``--train-patch`` LR patches) and share, and
  peak tensor memory (every tensor allocated during the call, tracked at the dispatcher; on CUDA
  ``torch.cuda.max_memory_allocated``);
- ratios: the fast path's speed-up over the reference and over RCAN.

Rows: ``fast`` (what ``D2CSR.forward`` runs), ``reference`` (the plain per-branch implementation,
``D2CSR.reference_forward_branches`` / ``reference_fuse``, NCHW as PyTorch defaults), ``reference_cl``
(the same in channels-last, to separate layout from the rest), ``rcan`` (BasicSR's ``RCAN`` with groups
and blocks chosen to match D2C-SR's parameter count, channels-last) and, with ``--compile``,
``fast_compiled``.

Timing (:func:`time_rows`): each row runs warm-up calls, then its timed calls back to back, in two passes
over the rows (so a change of load hits all rows alike); the table shows the best call and the median.
The machine's load average (which counts this benchmark's own threads) is printed with the figures:
re-run on a quiet machine for figures to quote.

Examples::

    python benchmarks/bench_d2c.py                        # CPU, x4, 1x3x64x64 inference, 4x3x48x48 training
    python benchmarks/bench_d2c.py --json > speed.json    # the same, as JSON
    python benchmarks/bench_d2c.py --device cuda --size 256 --dtype bf16   # GPU, autocast bf16 inference
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


def time_rows(fns, device, warmup, repeats, rounds=2):
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
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
    return times


def conv_limit(batch, size, channels, device, dtype, warmup, repeats):
    """GFLOP/s of one ``channels``-channel 3x3 conv, NCHW and channels-last (``autocast`` for bf16/fp16)."""
    x = torch.randn(batch, channels, size, size, device=device)
    conv = torch.nn.Conv2d(channels, channels, 3, 1, 1).to(device)
    conv_cl = torch.nn.Conv2d(channels, channels, 3, 1, 1).to(device).to(memory_format=CL)
    x_cl = x.contiguous(memory_format=CL)
    flops = 2 * channels * channels * 9 * size * size * batch
    autocast = dtype != torch.float32

    def run(m, inp):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return m(inp)

    # one conv is short (about 1.5 ms on 2 CPU cores): many samples, the best of them
    times = time_rows({'nchw': lambda: run(conv, x), 'channels_last': lambda: run(conv_cl, x_cl)}, device,
                      max(warmup, 3), max(repeats * 5, 1))
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


def d2c_inference(net, reference, channels_last, dtype, device):
    autocast = dtype != torch.float32

    def run(x):
        if not reference:
            with torch.inference_mode():
                return net(x)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            xin = x.contiguous(memory_format=CL) if channels_last else x
            return net.reference_fuse(net.reference_forward_branches(xin))[0]

    return run


def d2c_train_step(net, reference, channels_last, div_loss, conv_loss):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step(lq, gt):
        optimizer.zero_grad(set_to_none=True)
        if reference:
            lq = lq.contiguous(memory_format=CL) if channels_last else lq
            branches = net.reference_forward_branches(lq)
            sr, _ = net.reference_fuse(branches)
        else:
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
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
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
    limit = conv_limit(args.batch, args.size, 64, device, dtype, args.warmup, args.repeats)

    # models: one D2C-SR, shared by its rows (same weights), and a comparable RCAN
    d2c = D2CSR(**net_opt).to(device)
    d2c_params = sum(p.numel() for p in d2c.parameters())
    rcan, (rcan_groups, rcan_blocks) = rcan_like(d2c_params, num_feat, squeeze, args.scale)
    rcan = rcan.to(device).to(memory_format=CL)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    lq = torch.rand(args.train_batch, 3, args.train_patch, args.train_patch, device=device)
    gt = torch.rand(args.train_batch, 3, args.train_patch * args.scale, args.train_patch * args.scale, device=device)
    margins = [5e-5] * (args.depth - 1) + [2e-5]  # the authors' margins: cousins, then siblings
    div_loss = DivergenceLoss(alpha=2e-5, margins=margins, depth=args.depth, width=args.width).to(device)
    conv_loss = ConvergenceLoss().to(device)

    speed = dict(autocast=None if dtype == torch.float32 else dtype)
    d2c.set_speed_options(**speed)
    rows = {
        'fast': dict(model=d2c, infer=d2c_inference(d2c, False, True, dtype, device)),
        'reference': dict(model=d2c, infer=d2c_inference(d2c, True, False, dtype, device)),
        'reference_cl': dict(model=d2c, infer=d2c_inference(d2c, True, True, dtype, device)),
        'rcan': dict(model=rcan, infer=plain_inference(rcan, True, dtype, device)),
    }
    if args.compile:
        compiled = D2CSR(**net_opt).to(device)
        compiled.load_state_dict(d2c.state_dict())
        compiled.set_speed_options(compile=True, **speed)
        rows['fast_compiled'] = dict(model=compiled, infer=d2c_inference(compiled, False, True, dtype, device))

    # exactness of the fast path on this input (fp32 only; the tests check it everywhere)
    with torch.inference_mode():
        d2c.set_speed_options()
        fast_sr = d2c(x)
        d2c.set_speed_options(**speed)
        ref_sr = d2c.reference_fuse(d2c.reference_forward_branches(x))[0]
    max_abs_diff = (fast_sr - ref_sr).abs().max().item()

    # counted FLOPs: D2C-SR's reference path defines them (the fast path computes the same function; its
    # few-output convs, split into taps, would count the zero padding of their 1x1 conv too)
    with torch.inference_mode():
        flops_d2c = count_flops(lambda: d2c.reference_fuse(d2c.reference_forward_branches(x)))
        flops_rcan = count_flops(lambda: rcan(x))
    infer_flops = {name: (flops_rcan if name == 'rcan' else flops_d2c) for name in rows}

    results = {name: dict(params=sum(p.numel() for p in row['model'].parameters()),
                          infer_flops_per_image=infer_flops[name] / args.batch) for name, row in rows.items()}

    times = time_rows({name: (lambda f=row['infer']: f(x)) for name, row in rows.items()}, device, args.warmup,
                      args.repeats)
    for name, t in times.items():
        results[name].update(infer_s=min(t), infer_s_median=statistics.median(t),
                             infer_gflops=infer_flops[name] / min(t) / 1e9,
                             infer_of_limit=infer_flops[name] / min(t) / 1e9 / limit['limit'])
        results[name]['infer_peak_bytes'] = peak_memory(lambda f=rows[name]['infer']: f(x), device)

    if not args.skip_train:
        state = {k: v.clone() for k, v in d2c.state_dict().items()}
        steps = {}
        for name, row in rows.items():
            model = row['model']
            if name == 'rcan':
                steps[name] = plain_train_step(model, True)
            else:
                steps[name] = d2c_train_step(model, name.startswith('reference'), name == 'reference_cl', div_loss,
                                             conv_loss)
        flops_train_d2c = count_flops(lambda: steps['reference'](lq, gt))
        flops_train_rcan = count_flops(lambda: steps['rcan'](lq, gt))
        train_times = time_rows({name: (lambda s=s: s(lq, gt)) for name, s in steps.items()}, device,
                                max(args.warmup - 1, 1) if not args.smoke else 0, args.train_repeats)
        for name, t in train_times.items():
            flops = flops_train_rcan if name == 'rcan' else flops_train_d2c
            results[name].update(train_flops_per_step=flops, train_s=min(t), train_s_median=statistics.median(t),
                                 train_gflops=flops / min(t) / 1e9,
                                 train_of_limit=flops / min(t) / 1e9 / limit['limit'])
            results[name]['train_peak_bytes'] = peak_memory(lambda s=steps[name]: s(lq, gt), device)
        d2c.load_state_dict(state)

    fast = results['fast']
    ratios = {
        'infer_speedup_vs_reference': results['reference']['infer_s'] / fast['infer_s'],
        'infer_speedup_vs_reference_cl': results['reference_cl']['infer_s'] / fast['infer_s'],
        'infer_time_vs_rcan': fast['infer_s'] / results['rcan']['infer_s'],
        'infer_of_limit': fast['infer_of_limit'],
    }
    if not args.skip_train:
        ratios.update({
            'train_speedup_vs_reference': results['reference']['train_s'] / fast['train_s'],
            'train_speedup_vs_reference_cl': results['reference_cl']['train_s'] / fast['train_s'],
            'train_time_vs_rcan': fast['train_s'] / results['rcan']['train_s'],
            'train_of_limit': fast['train_of_limit'],
        })
    return dict(
        machine=dict(device=str(device), name=(torch.cuda.get_device_name(device) if device.type == 'cuda'
                                                else platform.processor() or platform.machine()),
                     threads=torch.get_num_threads(), torch=torch.__version__, load_before=load_before,
                     load_after=load_average(),
                     malloc_env={k: v for k, v in os.environ.items() if k.startswith('MALLOC_') or k == 'LD_PRELOAD'}),
        setting=dict(scale=args.scale, size=args.size, batch=args.batch, train_batch=args.train_batch,
                     train_patch=args.train_patch, dtype=args.dtype, depth=args.depth, width=args.width,
                     repeats=args.repeats, train_repeats=args.train_repeats, smoke=args.smoke,
                     rcan_groups=rcan_groups, rcan_blocks=rcan_blocks),
        conv_limit_gflops=limit, fast_vs_reference_max_abs_diff=max_abs_diff, rows=results, ratios=ratios)


def print_table(res):
    m, s, lim = res['machine'], res['setting'], res['conv_limit_gflops']
    print(f"device {m['device']} ({m['name']}), {m['threads']} threads, torch {m['torch']}, "
          f"load average before {m['load_before']} after {m['load_after']}")
    print(f"x{s['scale']}, inference {s['batch']}x3x{s['size']}x{s['size']} ({s['dtype']}), training "
          f"{s['train_batch']}x3x{s['train_patch']}x{s['train_patch']} (fp32); best / median of "
          f"{s['repeats']} (inference) and {s['train_repeats']} (training) calls per row, in two passes")
    print(f"limit: 64-ch 3x3 conv on {s['batch']}x64x{s['size']}x{s['size']}: {lim['nchw']:.1f} GFLOP/s NCHW, "
          f"{lim['channels_last']:.1f} channels-last -> {lim['limit']:.1f} GFLOP/s (median {lim['median']:.1f})")
    print(f"fast vs reference, max |SR difference| on this input: {res['fast_vs_reference_max_abs_diff']:.2e}")
    header = (f"{'row':<14}{'params':>11}{'GFLOP/img':>10}{'infer s':>9}{'(med)':>8}{'GFLOP/s':>9}{'limit':>7}"
              f"{'peak MB':>9}")
    train = 'train_s' in res['rows']['fast']
    if train:
        header += f"{'GFLOP/step':>11}{'train s':>9}{'(med)':>8}{'GFLOP/s':>9}{'limit':>7}{'peak MB':>9}"
    print(header)
    for name, r in res['rows'].items():
        line = (f"{name:<14}{r['params']:>11,d}{r['infer_flops_per_image'] / 1e9:>10.2f}{r['infer_s']:>9.3f}"
                f"{r['infer_s_median']:>8.3f}{r['infer_gflops']:>9.1f}{r['infer_of_limit']:>7.0%}"
                f"{r['infer_peak_bytes'] / 2**20:>9.1f}")
        if train:
            line += (f"{r['train_flops_per_step'] / 1e9:>11.1f}{r['train_s']:>9.3f}{r['train_s_median']:>8.3f}"
                     f"{r['train_gflops']:>9.1f}{r['train_of_limit']:>7.0%}{r['train_peak_bytes'] / 2**20:>9.1f}")
        print(line)
    print(f"rcan: BasicSR RCAN with {s['rcan_groups']} groups x {s['rcan_blocks']} blocks (closest parameter count)")
    print('ratios: ' + ', '.join(f'{k} {v:.2f}' for k, v in res['ratios'].items()))


# --------------------------------------------------------------------------------------------------
# training steps as users run them: D2CModel.optimize_parameters from the option files
PAPER_X4_ITERS = 2.29e6  # the paper's x4 schedule: 20,000 of the authors' epochs of ~115 iterations (batch 4, 96^2)
STEP_OPTION_FILES = {'divergence': 'options/train_D2C_div_x4.yml', 'convergence': 'options/train_D2C_conv_x4.yml'}
SMOKE_NET = dict(num_feat=16, num_group=1, num_block=1, squeeze_factor=4, fusion_feat=16)


def model_from_options(path, device, workdir, net_opt=None, amp=None, compile_mode=None, optim=None,
                       compile_backend=None):
    """A :class:`~d2csr.models.D2CModel` built in this process from an option file, as ``d2csr/train.py``
    builds it (no data sets, no launcher). The convergence stage gets a fresh stage-1 checkpoint."""
    import yaml
    from basicsr.models import build_model
    from basicsr.utils.options import ordered_yaml

    root = Path(__file__).resolve().parents[1]
    with open(root / path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
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


def model_step(model, lq, gt):
    """One ``optimize_parameters`` per call, iterations counted on from where the triplet term is on."""
    schedule = model.cri_div.schedule if model.cri_div is not None else None
    first = 1
    while schedule is not None and schedule(first) == 0 and first < 10**7:  # the triplet term on, as in its windows
        first += 1
    state = {'iter': first}
    data = {'lq': lq, 'gt': gt}

    def step():
        model.feed_data(data)
        model.optimize_parameters(state['iter'])
        state['iter'] += 1

    return step


def hand_written_step(net, lq, gt, div_loss, dtype):
    """The bare stage-1 step: ``net(lq, mode='branches')``, ``DivergenceLoss.terms``, fused Adam, no guard."""
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
    """Rows: ``optimize_parameters`` of both stages from the option files and the hand-written step, per
    training dtype in ``--train-dtype``; each with its time, profile, FLOPs, limit in its dtype, hours for the
    paper's x4 schedule."""
    import tempfile

    net_opt = dict(SMOKE_NET) if args.smoke else {}
    batch, patch, scale = args.train_batch, args.train_patch, 4
    lq = torch.rand(batch, 3, patch, patch, device=device)
    gt = torch.rand(batch, 3, patch * scale, patch * scale, device=device)
    rows, limits = {}, {}
    for dtype_name in args.train_dtype.split(','):
        dtype_name = dtype_name.strip()
        dtype = DTYPES[dtype_name]
        label = 'tf32' if dtype == torch.float32 and device.type == 'cuda' else dtype_name
        limits[label] = conv_limit(batch, patch, 64, device, dtype, args.warmup, max(args.train_repeats, 1))
        amp = None if dtype == torch.float32 else dtype_name
        with tempfile.TemporaryDirectory() as workdir:
            fns = {}
            for stage, path in STEP_OPTION_FILES.items():
                model = model_from_options(path, device, Path(workdir) / stage, net_opt, amp, args.train_compile,
                                           args.optim, args.compile_backend)
                fns[f'{stage}_{label}'] = (model, model_step(model, lq, gt))
            net = D2CSR(**dict(net_opt, upscale=scale)).to(device).to(memory_format=CL)
            div_loss = DivergenceLoss(alpha=2e-5, margins=[5e-5, 2e-5]).to(device)
            fns[f'hand_written_{label}'] = (net, hand_written_step(net, lq, gt, div_loss, dtype))
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
    parser.add_argument('--dtype', default='fp32', choices=sorted(DTYPES),
                        help='inference precision; bf16/fp16 use torch.autocast (training stays fp32)')
    parser.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (default: leave as is)')
    parser.add_argument('--warmup', type=int, default=3, help='warm-up calls per row (default 3)')
    parser.add_argument('--repeats', type=int, default=20, help='timed inference rounds (default 20)')
    parser.add_argument('--train-repeats', type=int, default=4, help='timed training rounds (default 4)')
    parser.add_argument('--skip-train', action='store_true', help='inference only')
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
    device = torch.device(args.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('bench_d2c: --device cuda but torch.cuda.is_available() is False; use --device cpu')
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
