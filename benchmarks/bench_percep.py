#!/usr/bin/env python
"""What the perceptual variant costs: time per training iteration with and without the VGG loss, and LPIPS per
validation image.

Each training row times ``D2CModel.optimize_parameters`` (forward, losses, backward, NaN guard, Adam), the
code that ``d2csr/train.py`` runs, on random ``--batch`` x 3 x ``--patch``² LR patches (x4), for the divergence
stage (the VGG loss on every one of the 4 branches) and the convergence stage (on the fused output), without
and with ``perceptual_opt`` as in ``options/train_D2C_{div,conv}_x4_percep.yml`` (VGG19 up to relu5_4). The
VGG is randomly initialised (``pretrained: false``): the same computation as with the ImageNet weights, which
this benchmark does not need. Rows alternate (plain, VGG, plain, VGG, ...) so that a change of load hits both.
Each figure is the median wall time and the process's CPU time (all threads; with ``--threads 1`` the less
load-sensitive figure on a shared machine). The validation rows time BasicSR's PSNR + SSIM and
``calculate_lpips`` (AlexNet, random backbone: same computation) on one ``--val-size``² image pair.

Examples::

    python benchmarks/bench_percep.py                 # paper network (64 features), batch 4, 48x48 LR patches
    python benchmarks/bench_percep.py --feat 32 --iters 2 --threads 1
    python benchmarks/bench_percep.py --smoke         # tiny, one iteration (a quick check that it runs)
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# numpy, torch, BasicSR and d2csr are imported where they are used, after the arguments: --help answers at once

PERCEP_OPT = {'type': 'PerceptualLoss', 'layer_weights': {'relu5_4': 1.0}, 'vgg_type': 'vgg19', 'criterion': 'l2',
              'perceptual_weight': 0.006, 'pretrained': False}


def model_options(stage, network, percep, tmp):
    opt = {
        'name': 'bench_percep', 'model_type': 'D2CModel', 'scale': 4, 'num_gpu': 0, 'is_train': True, 'dist': False,
        'rank': 0, 'world_size': 1, 'auto_resume': False,
        'network_g': dict(network),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'models': tmp, 'training_states': tmp},
        'train': {'stage': stage, 'optim_g': {'type': 'Adam', 'lr': 1e-4, 'betas': [0.9, 0.999]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [10**6], 'gamma': 0.5}, 'total_iter': 10**6,
                  'warmup_iter': -1},
        'val': {'metrics': {}},
        'datasets': {},
    }
    if stage == 'divergence':
        opt['train']['divergence_opt'] = {'type': 'DivergenceLoss', 'alpha': 2e-5, 'margins': [5e-5, 2e-5],
                                          'theta': 0.8, 'depth': 2, 'width': 2}
    else:
        import torch
        from basicsr.archs import build_network

        opt['train']['convergence_opt'] = {'type': 'ConvergenceLoss'}
        path = os.path.join(tmp, 'stage1.pth')
        torch.save({'params': build_network(dict(network)).state_dict()}, path)
        opt['path']['pretrain_network_g'] = path
    if percep:
        opt['train']['perceptual_opt'] = dict(PERCEP_OPT)
    return opt


def time_training(args, network):
    """``{(stage, percep): [(wall seconds, CPU seconds) per iteration, ...]}``, rows alternating."""
    import torch
    from basicsr.models import build_model

    g = torch.Generator().manual_seed(0)
    data = {'lq': torch.rand(args.batch, 3, args.patch, args.patch, generator=g),
            'gt': torch.rand(args.batch, 3, 4 * args.patch, 4 * args.patch, generator=g)}
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in ('divergence', 'convergence'):
            models = {percep: build_model(model_options(stage, network, percep, tmp)) for percep in (False, True)}
            for model in models.values():  # warm-up
                model.feed_data(data)
                model.optimize_parameters(1)
            for it in range(args.iters):
                for percep, model in models.items():
                    model.feed_data(data)
                    start, cpu = time.perf_counter(), time.process_time()
                    model.optimize_parameters(it + 2)
                    times.setdefault((stage, percep), []).append(
                        (time.perf_counter() - start, time.process_time() - cpu))
            del models
    return times


def time_validation(args):
    import numpy as np
    from basicsr.metrics import calculate_psnr, calculate_ssim

    from d2csr.metrics import calculate_lpips

    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (args.val_size, args.val_size, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(np.int16) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    calculate_lpips(sr, hr, crop_border=4, pretrained=False, device='cpu')  # builds the (cached) network
    rows = {'psnr + ssim (Y)': lambda: (calculate_psnr(sr, hr, 4, test_y_channel=True),
                                        calculate_ssim(sr, hr, 4, test_y_channel=True)),
            'lpips (alex)': lambda: calculate_lpips(sr, hr, crop_border=4, pretrained=False, device='cpu')}
    times = {}
    for _ in range(args.iters):
        for name, fn in rows.items():
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            times.setdefault(name, []).append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--feat', type=int, default=64, help='num_feat of D2CSR (paper: 64)')
    parser.add_argument('--batch', type=int, default=4, help='training batch (paper: 4)')
    parser.add_argument('--patch', type=int, default=48, help='LR patch side (paper: 96; 48 keeps CPU runs short)')
    parser.add_argument('--iters', type=int, default=3, help='timed iterations per row (after one warm-up)')
    parser.add_argument('--val-size', type=int, default=512, help='HR side of the validation image pair')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    parser.add_argument('--smoke', action='store_true', help='tiny network and sizes, one iteration')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    import d2csr  # noqa: F401  (BasicSR shim, registries)

    if args.smoke:
        args.feat, args.batch, args.patch, args.iters, args.val_size = 8, 1, 8, 1, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    network = {'type': 'D2CSR', 'num_feat': args.feat, 'upscale': 4, 'depth': 2, 'width': 2}
    if args.smoke:
        network.update(num_group=1, num_block=1, squeeze_factor=4, fusion_feat=8)

    print(f'# D2C-SR x4, num_feat {args.feat}, batch {args.batch} x 3 x {args.patch}x{args.patch} LR '
          f'({4 * args.patch}x{4 * args.patch} HR), {torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'load average {os.getloadavg()[0]:.1f} at start')
    train = time_training(args, network)
    print('\n| stage | plain: wall / CPU (s / iter) | with VGG loss: wall / CPU (s / iter) | ratio (wall, CPU) |')
    print('| --- | ---: | ---: | ---: |')
    results = {}
    for stage in ('divergence', 'convergence'):
        plain, vgg = (tuple(statistics.median(t[i] for t in train[(stage, percep)]) for i in (0, 1))
                      for percep in (False, True))
        results[stage] = (plain, vgg)
        print(f'| {stage} | {plain[0]:.2f} / {plain[1]:.2f} | {vgg[0]:.2f} / {vgg[1]:.2f} | '
              f'{vgg[0] / plain[0]:.2f}x, {vgg[1] / plain[1]:.2f}x |')
    val = time_validation(args)
    print(f'\n| validation metric, {args.val_size}x{args.val_size} image | wall / CPU (s / image) |')
    print('| --- | ---: |')
    for name, values in val.items():
        wall, cpu = (statistics.median(t[i] for t in values) for i in (0, 1))
        print(f'| {name} | {wall:.3f} / {cpu:.3f} |')
    print(f'\nmedians of {args.iters} iterations; CPU = process CPU time (all threads); '
          f'load average {os.getloadavg()[0]:.1f} at the end')
    return results, val


if __name__ == '__main__':
    main()
