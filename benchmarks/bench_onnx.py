#!/usr/bin/env python
"""ONNX Runtime against PyTorch: inference time and parity of an exported D2C-SR model.

In one run: the model (``--model`` checkpoint, else the default D2C-SR with random weights: paper size, 64
features, L=2, C=2, G=2, B=4; time and parity do not depend on the weights) is exported with
:func:`d2csr.integrations.onnx_export.export_onnx` (so the export's own verification runs and its figures are
printed), then for each LR size (``--sizes``) both run the same input, untiled, batch 1:

- PyTorch: d2csr's forward as the CLI runs it (``torch.inference_mode``, channels-last CPU fast path), fp32;
- ONNX Runtime: an ``InferenceSession`` of the exported file (CPU execution provider, all graph optimisations,
  ``intra_op_num_threads`` = PyTorch's thread count).

Each size runs warm-up calls, then ``--repeats`` rounds that alternate the two (so a change of the machine's
load hits both alike); the table shows the best and the median call, ONNX Runtime / PyTorch ratios (< 1: ONNX
Runtime faster) and the max |diff| between the two outputs. The load average is printed with the figures.

GPU (prepared, run where there is one): ``--device cuda`` times PyTorch on CUDA (fp32, or fp16 autocast with
``--fp16``) against ONNX Runtime's ``CUDAExecutionProvider`` (needs ``onnxruntime-gpu``) on the fp32 or fp16
export.

    python benchmarks/bench_onnx.py                               # CPU, 64x64 and 128x128 LR, x4
    python benchmarks/bench_onnx.py --threads 1 --sizes 96x96
    python benchmarks/bench_onnx.py --model net_g_latest.pth --sizes 256x256
    python benchmarks/bench_onnx.py --device cuda --fp16 --sizes 256x256 512x512
    python benchmarks/bench_onnx.py --smoke                       # tiny network, one size (the tests run this)
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

# torch and d2csr are imported where they are used, after the arguments: --help answers at once


def parse_size(text):
    height, width = (int(v) for v in text.lower().split('x'))
    return height, width


def build_model(args):
    import torch

    from d2csr.archs import D2CSR
    from d2csr.loading import load_network

    if args.model:
        net, opts, _ = load_network(args.model, args.opt)
        return net, opts, args.model
    torch.manual_seed(0)
    tiny = dict(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, fusion_feat=8)
    opts = dict(tiny if args.smoke else {}, upscale=args.scale)
    return D2CSR(**opts).eval(), dict(type='D2CSR', **opts), 'random weights'


def session_for(path, ort, device, threads):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if device == 'cuda':
        if 'CUDAExecutionProvider' not in ort.get_available_providers():
            raise SystemExit('error: --device cuda needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime '
                             f'has {ort.get_available_providers()}')
        providers = ['CUDAExecutionProvider', 'CPUExecutionProvider']
    else:
        providers = ['CPUExecutionProvider']
    return ort.InferenceSession(str(path), options, providers=providers)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=None, help='checkpoint to export (default: the paper-size D2C-SR, random)')
    parser.add_argument('-opt', default=None, help='options file of --model (default: beside it, else inferred)')
    parser.add_argument('--scale', type=int, default=4, help='scale of the random-weight model')
    parser.add_argument('--sizes', nargs='+', default=['64x64', '128x128'], help='LR sizes HxW')
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds per size')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls per size and runtime')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads for both (default: torch\'s)')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--fp16', action='store_true', help='GPU: fp16 export and PyTorch under fp16 autocast')
    parser.add_argument('--smoke', action='store_true', help='a tiny network, one 24x20 size, one round')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats, args.warmup = ['24x20'], 1, 1
    if args.fp16 and args.device != 'cuda':
        raise SystemExit('error: --fp16 is for --device cuda (ONNX Runtime\'s CPU provider has few fp16 kernels)')
    import torch

    from d2csr.integrations.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, require_onnx
    from d2csr.utils import device_from_flag

    _, ort = require_onnx()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = device_from_flag(args.device)

    net, opts, origin = build_model(args)
    precision = 'fp16' if args.fp16 else 'fp32'
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'model.onnx')
        start = time.perf_counter()
        meta, checks = export_onnx(net, path, opts, precision)
        export_s = time.perf_counter() - start
        session = session_for(path, ort, args.device, threads)
        print(f'model: x{net.upscale} D2CSR ({origin}), {sum(p.numel() for p in net.parameters()):,d} parameters; '
              f'onnxruntime {ort.__version__}, torch {torch.__version__}, {args.device}, {threads} thread(s), '
              f'load average {os.getloadavg()[0]:.2f}')
        print(f'export ({precision}) + verification: {export_s:.1f} s; ONNX Runtime vs PyTorch max |diff| '
              + ', '.join(f'{"x".join(map(str, s))}: {d:.2e}' for s, d in checks))
        net = net.to(device)
        autocast = torch.autocast('cuda', dtype=torch.float16) if args.fp16 else torch.autocast('cpu', enabled=False)
        in_dtype = torch.float16 if args.fp16 else torch.float32

        def run_torch(x):
            with torch.inference_mode(), autocast:
                out = net(x.to(device))
            if device.type == 'cuda':
                torch.cuda.synchronize()
            return out.float().clamp(0, 1).cpu()

        def run_ort(x):
            return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.to(in_dtype).numpy()})[0]).float()

        print(f'{"LR size":<10}{"output":<12}{"PyTorch best/median (s)":>26}{"ORT best/median (s)":>24}'
              f'{"ORT/PyTorch best":>18}{"median":>8}{"max |diff|":>12}')
        for size in args.sizes:
            height, width = parse_size(size)
            x = torch.rand(1, net.head.in_channels, height, width, generator=torch.Generator().manual_seed(1))
            for _ in range(args.warmup):
                ref, out = run_torch(x), run_ort(x)
            times = {'torch': [], 'ort': []}
            for _ in range(args.repeats):
                for name, fn in (('torch', run_torch), ('ort', run_ort)):
                    start = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - start)
            best = {k: min(v) for k, v in times.items()}
            median = {k: statistics.median(v) for k, v in times.items()}
            diff = float((out - ref).abs().max())
            print(f'{size:<10}{f"{width * net.upscale}x{height * net.upscale}":<12}'
                  f'{best["torch"]:>14.3f} / {median["torch"]:<9.3f}{best["ort"]:>12.3f} / {median["ort"]:<9.3f}'
                  f'{best["ort"] / best["torch"]:>16.2f}x{median["ort"] / median["torch"]:>7.2f}x{diff:>12.2e}',
                  flush=True)
        print(f'load average after the run: {os.getloadavg()[0]:.2f} (it counts these threads; quote figures from '
              'a quiet machine)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
