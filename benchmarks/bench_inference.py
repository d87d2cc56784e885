"""Peak memory and time per LR megapixel of D2C-SR inference in each mode; the bounded mode's deviation.

    python benchmarks/bench_inference.py                          # CPU, default x4 network, every mode
    python benchmarks/bench_inference.py --sizes 500x500 1000x1000 --modes exact whole-lr
    python benchmarks/bench_inference.py --device cuda            # adds peak CUDA memory (torch.cuda)
    python benchmarks/bench_inference.py --deviation              # bounded vs exact PSNR on held-out photos

Memory: every run is a fresh subprocess with the default 64-feature x4 network (random weights: memory and time
do not depend on them). It reports the growth of the process's resident memory during the call (``ru_maxrss``
after the call minus the resident memory before it: the model, Python and torch are not counted) per LR
megapixel, at two sizes; the slope between them (GiB per additional LR megapixel, what a larger photo adds);
the tensor memory the plan of :mod:`d2csr.memory` predicts for the same call (what inference checks, with a
margin, before it starts; "plan");
and the time per LR megapixel, wall and CPU (user + system: on a busy machine the CPU time is the steadier one).
Modes:

- ``exact``: :func:`d2csr.tiling.tiled_forward` (the LR half in bands, the HR half in 128-pixel tiles): the
  inference default, equal to the untiled output up to float rounding;
- ``whole-lr``: the same with the LR half in one piece (``lr='whole'``): what ``--tile`` did before;
- ``bounded``: :func:`d2csr.tiling.bounded_forward` (512-pixel tiles of the whole network, two passes): memory
  independent of the image beyond the output, approximate (see ``--deviation``);
- ``untiled``: the plain forward (``--tile 0``), only at the sizes that fit (``--max_gb``).

On a GPU (``--device cuda``) the figures are peak CUDA memory (``torch.cuda.max_memory_allocated``), fp16
under autocast as the inference script runs by default there, and wall time after a warm-up run.

``--deviation``: trains the default network briefly on the photo pairs (or loads ``--model_path``), then
upscales the held-out photographs (coffee, chelsea; their full size as the LR input) exactly and in the
bounded mode with several tile sizes and passes, and prints the PSNR of each against exact.
"""
import argparse
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
MODES = ('exact', 'whole-lr', 'bounded', 'untiled')
GIB = 2**30


def rss_now():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(args):
    import torch

    sys.path.insert(0, ROOT)
    import d2csr  # noqa: F401
    from d2csr.archs import D2CSR
    from d2csr.memory import plan_run, release_large_allocations
    from d2csr.tiling import bounded_forward, tiled_forward

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    release_large_allocations()  # as the inference script and d2csr.Upscaler do
    device = torch.device(args.device)
    net = D2CSR(upscale=args.scale, mean_shift='learnable').eval().to(device)
    x = torch.rand(1, 3, args.height, args.width, device=device)
    mode = {'exact': 'exact', 'whole-lr': 'exact', 'bounded': 'bounded', 'untiled': 'whole'}[args.mode]
    amp = 'fp16' if device.type == 'cuda' else None
    planned, _ = plan_run(net, (1, 3, args.height, args.width), mode=mode, amp=amp, plan_outputs=device.type == 'cpu',
                          bounded_tile=args.bounded_tile,
                          lr='whole' if args.mode == 'whole-lr' else 'banded')  # the tensors the call holds at its peak
    out_device = 'cpu'

    def call():
        with torch.no_grad(), torch.autocast(device.type, torch.float16, enabled=amp is not None):
            if args.mode == 'exact':
                return tiled_forward(net, x, tile=128, output_device=out_device).sr
            if args.mode == 'whole-lr':
                return tiled_forward(net, x, tile=128, lr='whole', output_device=out_device).sr
            if args.mode == 'bounded':
                return bounded_forward(net, x, tile=args.bounded_tile, output_device=out_device).sr
            return net(x).float().cpu()

    if device.type == 'cuda':
        call()  # warm-up (cuDNN autotuning, lazy initialisation)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_now()
    cpu0, start = cpu_seconds(), time.perf_counter()
    sr = call()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    if device.type == 'cuda':
        grown = torch.cuda.max_memory_allocated() - base
    else:
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps(dict(time_s=elapsed, cpu_s=cpu, grown=grown, planned=planned, out=list(sr.shape))))


def run(args, mode, height, width):
    cmd = [sys.executable, osp.abspath(__file__), '--worker', '--mode', mode, '--height', str(height), '--width',
           str(width), '--scale', str(args.scale), '--device', args.device, '--threads', str(args.threads),
           '--bounded_tile', str(args.bounded_tile)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(error=(proc.stderr.strip().splitlines() or [f'exit {proc.returncode}'])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_table(args):
    import torch

    where = 'peak CUDA memory (max_memory_allocated)' if args.device.startswith('cuda') else \
        'resident memory growth (ru_maxrss - RSS before the call)'
    print(f'{args.device}, {args.threads} thread(s), torch {torch.__version__}, default D2CSR x{args.scale} (64 '
          f'features, 2x4 RCAB per node, depth 2, width 2), fp32 on the CPU / fp16 autocast on a GPU; {where}; '
          f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')
    print(f'{"mode":<10}{"LR size":>11}{"MP":>6}{"GiB":>8}{"GiB/MP":>8}{"plan GiB":>10}{"s/MP":>8}{"CPU s/MP":>10}')
    sizes = [tuple(map(int, s.split('x'))) for s in args.sizes]
    for mode in args.modes:
        rows = []
        for height, width in sizes:
            mp = height * width / 1e6
            if mode == 'untiled' and 9.5 * mp + 1 > args.max_gb:
                print(f'{mode:<10}{f"{width}x{height}":>11}{mp:>6.2f}  skipped (about {9.5 * mp:.0f} GiB > --max_gb)')
                continue
            res = run(args, mode, height, width)
            if 'error' in res:
                print(f'{mode:<10}{f"{width}x{height}":>11}{mp:>6.2f}  failed: {res["error"]}')
                continue
            rows.append((mp, res))
            print(f'{mode:<10}{f"{width}x{height}":>11}{mp:>6.2f}{res["grown"] / GIB:>8.2f}'
                  f'{res["grown"] / GIB / mp:>8.2f}{res["planned"] / GIB:>10.2f}{res["time_s"] / mp:>8.1f}'
                  f'{res["cpu_s"] / mp:>10.1f}', flush=True)
        if len(rows) >= 2:
            (m1, r1), (m2, r2) = rows[0], rows[-1]
            slope = (r2['grown'] - r1['grown']) / GIB / (m2 - m1)
            print(f'{mode:<10}{"slope":>11}{"":>6}{"":>8}{slope:>8.2f}   (GiB per additional LR megapixel)', flush=True)


# ----------------------------------------------------------------------------------------------------------------
def trained_model(args):
    """The default x4 network, from ``--model_path`` or trained ``--train_iters`` steps on the photo pairs."""
    import numpy as np
    import torch

    sys.path.insert(0, ROOT)
    from d2csr.archs import D2CSR
    from d2csr.data.photo_pairs import build_photo_pairs, photo_pair_paths
    from d2csr.loading import load_network

    if args.model_path:
        net, _, _ = load_network(args.model_path)
        return net, f'{args.model_path}'
    import tempfile

    import cv2

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    root = tempfile.mkdtemp(prefix='d2c_bench_')
    build_photo_pairs(root, 4)
    pairs = [(cv2.imread(lr)[..., ::-1] / 255.0, cv2.imread(hr)[..., ::-1] / 255.0)
             for lr, hr in photo_pair_paths(root, 'train')]
    net = D2CSR(upscale=4).train()
    optim = torch.optim.Adam(net.parameters(), 2e-4)
    patch = 48
    for step in range(args.train_iters):
        lqs, gts = [], []
        for _ in range(4):
            lr, hr = pairs[rng.integers(len(pairs))]
            y, x = rng.integers(0, lr.shape[0] - patch + 1), rng.integers(0, lr.shape[1] - patch + 1)
            lqs.append(lr[y:y + patch, x:x + patch])
            gts.append(hr[4 * y:4 * (y + patch), 4 * x:4 * (x + patch)])
        lq = torch.from_numpy(np.stack(lqs)).permute(0, 3, 1, 2).float()
        gt = torch.from_numpy(np.stack(gts)).permute(0, 3, 1, 2).float()
        loss = sum(torch.nn.functional.l1_loss(b, gt) for b in net(lq, mode='branches'))
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 50 == 0 or step == args.train_iters - 1:
            print(f'  training step {step + 1}/{args.train_iters}: L1 sum {loss.item():.4f}', flush=True)
    return net.eval(), f'the default x4 network trained {args.train_iters} steps (batch 4 of 48x48 LR patches, L1 ' \
        'on each branch, Adam 2e-4) on the photo pairs\' training photos: NOT a converged model'


def deviation(args):
    import numpy as np
    import torch

    sys.path.insert(0, ROOT)
    import d2csr  # noqa: F401
    from d2csr.data.photo_pairs import VAL_PHOTOS, load_photo
    from d2csr.tiling import bounded_forward, network_radius, tiled_forward

    torch.set_num_threads(args.threads)
    net, source = trained_model(args)
    print(f'model: {source}; held-out photos {", ".join(VAL_PHOTOS)} upscaled x4 at their full size; PSNR (RGB, '
          '8-bit, whole image) of the bounded mode against exact (inf: identical 8-bit images)')
    print(f'{"photo":<10}{"LR size":>10}{"tile":>6}{"pad":>5}{"passes":>8}{"PSNR dB":>9}{"max |d| (8-bit)":>17}'
          f'{"CPU / exact":>12}')

    def to8(t):
        return (t.clamp(0, 1) * 255).round().squeeze(0).numpy()

    radius = network_radius(net)
    configs = [(tile, radius, passes) for tile in args.dev_tiles for passes in args.dev_passes]
    configs += [(tile, 16, 2) for tile in args.dev_tiles[-1:]]  # a smaller widening: faster, context cut short
    for name in VAL_PHOTOS:
        img = load_photo(name)
        x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()
        start = time.process_time()
        exact = to8(tiled_forward(net, x).sr)
        exact_cpu = time.process_time() - start
        for tile, pad, passes in configs:
            start = time.process_time()
            out = to8(bounded_forward(net, x, tile=tile, tile_pad=pad, passes=passes).sr)
            cpu = time.process_time() - start
            mse = float(np.mean((out - exact) ** 2))
            psnr = float('inf') if mse == 0 else 10 * np.log10(255**2 / mse)
            print(f'{name:<10}{f"{img.shape[1]}x{img.shape[0]}":>10}{tile:>6}{pad:>5}{passes:>8}{psnr:>9.2f}'
                  f'{np.abs(out - exact).max():>17.0f}{cpu / exact_cpu:>12.2f}', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', nargs='+', default=['500x500', '1000x1000'], help='LR sizes HxW (two or more)')
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads (1: steady figures on a busy machine)')
    parser.add_argument('--max_gb', type=float, default=8.0, help='untiled runs only where they need less')
    parser.add_argument('--bounded_tile', type=int, default=512,
                        help='bounded mode: tile side in LR pixels (inference\'s --bounded_tile); a size at or below '
                             'one tile is one tile, so measure the mode on images larger than the tile')
    parser.add_argument('--deviation', action='store_true', help='bounded vs exact PSNR on the held-out photos')
    parser.add_argument('--model_path', default=None, help='--deviation: a trained checkpoint (default: train one)')
    parser.add_argument('--train_iters', type=int, default=200, help='--deviation: training steps without a model')
    parser.add_argument('--dev_tiles', type=int, nargs='+', default=[128, 256])
    parser.add_argument('--dev_passes', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--mode', help=argparse.SUPPRESS)
    parser.add_argument('--height', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--width', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.deviation:
        return deviation(args)
    return memory_table(args)


if __name__ == '__main__':
    sys.exit(main())
