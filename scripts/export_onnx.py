"""Export a trained D2C-SR model to ONNX (ONNX Runtime, OpenVINO, TensorRT), verified before it is written.

    python scripts/export_onnx.py experiments/<name>/models/net_g_latest.pth d2csr_x4.onnx
    python scripts/export_onnx.py D2C-SR_x4.pkl d2csr_x4_fp16.onnx --fp16        # half precision, for GPUs
    python scripts/export_onnx.py net_g.pth d2c_vdsr.onnx -opt options/test_D2C-VDSR_x4.yml

MODEL is a BasicSR checkpoint (``params_ema`` preferred, else ``params``) or the authors' MegEngine pickle; its
``network_g`` comes from ``-opt``, else from the options file BasicSR saved beside a training checkpoint, else it
is inferred from the weights (as for ``inference/inference_d2csr.py``).

The file holds input ``input`` (N, 3, H, W), RGB, NCHW, range [0, 1], with dynamic batch, height and width, and
output ``output`` (N, 3, s*H, s*W) clamped to [0, 1]; this contract, the scale and the ``network_g`` are written
into its metadata (``metadata_props``) and printed. Before it is written, the ONNX checker and ONNX Runtime run
it at two odd sizes against the PyTorch network (max |diff| <= 1e-4 in fp32, 1e-2 for ``--fp16``, whose inputs
and outputs are float16); a model that fails is not written, and the file appears whole or not at all.
Needs ``pip install "d2csr[onnx]"``.
"""
import argparse
import os
import os.path as osp
import sys

# torch and d2csr are imported in main(), after the arguments: --help answers at once

DEFAULT_OPSET = 17  # d2csr.integrations.onnx_export.OPSET, written out for --help (a test checks they agree)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='BasicSR checkpoint (net_g_*.pth) or the authors\' MegEngine pickle')
    parser.add_argument('output', help='ONNX file to write (.onnx)')
    parser.add_argument('-opt', type=str, default=None,
                        help='options file whose network_g builds the model (default: beside it, else inferred)')
    parser.add_argument('--param_key', type=str, default=None,
                        help='checkpoint entry to load (default: params_ema when present, else params)')
    parser.add_argument('--fp16', action='store_true',
                        help='float16 weights, input and output (for GPUs; checked against the fp32 network)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    parser.add_argument('--force', action='store_true', help='overwrite an existing output file')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if osp.exists(args.output) and not args.force:
        sys.exit(f'error: {args.output} exists; pass --force to overwrite it')
    if osp.isdir(args.output):
        sys.exit(f'error: {args.output} is a folder; give the .onnx file to write')

    from d2csr.convert import UnsafeCheckpointError
    from d2csr.integrations.onnx_export import ExportError, export_onnx, require_onnx
    from d2csr.loading import describe_param_key, load_network

    try:
        require_onnx()
        net, network_opt, origin = load_network(args.model, args.opt, param_key=args.param_key)
    except (ExportError, UnsafeCheckpointError, ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    precision = 'fp16' if args.fp16 else 'fp32'
    print(f'model: {args.model}{describe_param_key(net)}; network_g {origin}')
    folder = osp.dirname(osp.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    try:
        meta, results = export_onnx(net, args.output, network_opt, precision, source=osp.basename(args.model),
                                    opset=args.opset)
    except ExportError as err:
        sys.exit(f'error: {err}; nothing was written')
    print(f'contract (also in the file\'s metadata_props):\n  {meta["d2csr.input"]}\n  {meta["d2csr.output"]}\n'
          f'  scale: {meta["d2csr.scale"]}')
    checks = ', '.join(f'{"x".join(map(str, shape))}: {diff:.2e}' for shape, diff in results)
    print(f'verified: ONNX checker passed; ONNX Runtime vs PyTorch max |diff| ({precision}) {checks}')
    size = osp.getsize(args.output) / 2**20
    print(f'wrote {args.output} ({size:.1f} MiB, opset {args.opset}, {precision})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
