"""Peak memory and time of D2C-SR inference on large images, tiled (exact) and untiled.

    python benchmarks/bench_inference.py                      # the two target cases, CPU
    python benchmarks/bench_inference.py --cases x4:256x256 --untiled run

Every run is a fresh subprocess with the default 64-feature model (random weights: memory and time do not
depend on them) and reports the process's peak resident memory (``ru_maxrss``: everything, Python and torch
included) and the wall time of the forward pass. Cases (``xS:HxW``, LR size):

- ``x8:288x432``: a D2CRealSR-sized x8 input (432 x 288 LR -> 3456 x 2304);
- ``x4:1000x1000``: 1000 x 1000 LR -> 4000 x 4000.

Untiled runs of these sizes need far more memory than the machine may have, so by default
(``--untiled auto``) the untiled peak is measured at 1/16 and 1/4 of the area and extrapolated linearly in
the area (marked ``est.``); the full untiled run happens only when that estimate is below ``--max_gb``.
"""
import argparse
import json
import os.path as osp
import resource
import subprocess
import sys
import time

TARGET_GB = 4.0


def worker(args):
    import torch

    import d2csr  # noqa: F401
    from d2csr.archs import D2CSR
    from d2csr.tiling import tiled_forward

    torch.manual_seed(0)
    net = D2CSR(upscale=args.scale, mean_shift='learnable').eval()
    x = torch.rand(1, 3, args.height, args.width)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    with torch.no_grad():
        if args.mode == 'tiled':
            sr = tiled_forward(net, x, tile=args.tile).sr
        else:
            sr = net(x)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(dict(time_s=elapsed, peak_gb=peak, base_gb=base, out=list(sr.shape))))


def run(scale, height, width, mode, tile):
    cmd = [sys.executable, osp.abspath(__file__), '--worker', '--scale', str(scale), '--height', str(height),
           '--width', str(width), '--mode', mode, '--tile', str(tile)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(error=(proc.stderr.strip().splitlines() or [f'exit {proc.returncode}'])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cases', nargs='+', default=['x8:288x432', 'x4:1000x1000'], help='xS:HxW (LR size)')
    parser.add_argument('--tile', type=int, default=128, help='tile size in LR pixels')
    parser.add_argument('--untiled', choices=['auto', 'run', 'skip'], default='auto')
    parser.add_argument('--max_gb', type=float, default=8.0, help='auto: run untiled only below this estimate')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--scale', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--height', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--width', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--mode', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch
    print(f'CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, default D2CSR (64 features, '
          f'2x4 RCAB per node, depth 2, width 2); peak = ru_maxrss of the whole process; tile {args.tile} LR px')
    print(f'{"case":<16}{"mode":<22}{"output":<14}{"time (s)":>10}{"peak (GB)":>11}  within {TARGET_GB:g} GB')
    for case in args.cases:
        scale, size = case.lstrip('x').split(':')
        scale = int(scale)
        height, width = map(int, size.split('x'))
        out = f'{width * scale}x{height * scale}'

        def show(mode, res, note=''):
            if 'error' in res:
                print(f'{case:<16}{mode:<22}{out:<14}  failed: {res["error"]}')
                return
            ok = 'yes' if res['peak_gb'] <= TARGET_GB else 'no'
            print(f'{case:<16}{mode:<22}{out:<14}{res["time_s"]:>10.1f}{res["peak_gb"]:>11.2f}  {ok}{note}',
                  flush=True)

        show('tiled', run(scale, height, width, 'tiled', args.tile))
        if args.untiled == 'skip':
            continue
        if args.untiled == 'auto':
            small = [(f, run(scale, max(1, round(height * f)), max(1, round(width * f)), 'untiled', 0))
                     for f in (0.25, 0.5)]
            for f, res in small:
                if 'error' in res:
                    show(f'untiled at {f:g}x side', res)
            if all('error' not in res for _, res in small):
                (f1, r1), (f2, r2) = small
                a1, a2 = f1**2, f2**2
                slope_m = (r2['peak_gb'] - r1['peak_gb']) / (a2 - a1)
                slope_t = (r2['time_s'] - r1['time_s']) / (a2 - a1)
                est = dict(peak_gb=r2['peak_gb'] + slope_m * (1 - a2), time_s=r2['time_s'] + slope_t * (1 - a2))
                if est['peak_gb'] >= args.max_gb:
                    show('untiled (est.)', est, f'  (extrapolated from {f1:g}x and {f2:g}x side: '
                         f'{r1["peak_gb"]:.2f} / {r2["peak_gb"]:.2f} GB)')
                    continue
        show('untiled', run(scale, height, width, 'untiled', 0))


if __name__ == '__main__':
    sys.exit(main())
