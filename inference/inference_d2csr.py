"""Super-resolve real images of any size with a trained D2C-SR model.

    python inference/inference_d2csr.py -i IMAGE_OR_FOLDER -o results/D2CSR --model_path net_g.pth

``--model_path`` takes a BasicSR checkpoint (``net_g_*.pth``) or the authors' MegEngine pickle. The network
configuration comes from ``-opt`` (an options file with ``network_g``), else from the options file BasicSR saved
beside a training checkpoint (``experiments/<name>/*.yml``), else it is inferred from the weights.
8-bit / 16-bit, gray / colour / colour + alpha images come out in the same kind as ``<name>_<suffix>.<ext>``.
The HR part runs in exact tiles (``--tile``, in LR pixels; ``0`` disables tiling), so large images fit in a few
GB. Unreadable images are skipped and named; the exit status is 1 when anything was skipped.

Precision (Real-ESRGAN's convention): on a GPU the network runs in half precision (fp16 under
``torch.autocast``) unless ``--fp32`` is given; on the CPU it runs in fp32 unless ``--amp bf16`` is given
(fast on CPUs with AVX512-BF16 or AMX). ``--amp bf16|fp16`` picks the half type on either device. The weights
stay fp32 (one autocast context per image, no copy of the model); the output is computed in fp32 from
the network's fp32 result.
"""
import argparse
import os
import os.path as osp
import sys

import torch
from tqdm import tqdm

import d2csr  # noqa: F401  (compatibility shims and registries)
from d2csr.utils import resolve_device, set_tf32
from d2csr.convert import UnsafeCheckpointError
from d2csr.loading import describe_param_key, load_network
from d2csr.utils.precision import amp_name, autocast
from d2csr.utils.image_io import UnreadableImage, image_to_tensor, list_images, read_image, tensor_to_rgb, write_image
from d2csr.tiling import tiled_forward


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--input', type=str, required=True, help='input image or folder')
    parser.add_argument('-o', '--output', type=str, default='results/D2CSR', help='output folder')
    parser.add_argument('--model_path', type=str, required=True,
                        help='BasicSR checkpoint (net_g_*.pth) or the authors\' MegEngine pickle')
    parser.add_argument('-opt', type=str, default=None,
                        help='options file whose network_g builds the model (default: inferred from the weights)')
    parser.add_argument('--param_key', type=str, default=None,
                        help='checkpoint entry to load (default: params_ema when present, else params)')
    parser.add_argument('-s', '--scale', type=int, default=None, help='expected scale (checked against the model)')
    parser.add_argument('--tile', type=int, default=128, help='tile size in LR pixels for the HR part; 0: no tiling')
    parser.add_argument('--tile_pad', type=int, default=None,
                        help='context around each tile in LR pixels (default and minimum: the exact radius)')
    parser.add_argument('--save_branches', action='store_true', help='also write each divergent branch')
    parser.add_argument('--suffix', type=str, default='D2CSR', help='suffix of the output names')
    parser.add_argument('--ext', type=str, default='auto', choices=['auto', 'png'],
                        help='output format: auto (the input\'s) or png')
    parser.add_argument('--device', type=str, default='auto', help='auto, cpu, cuda or cuda:N')
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument('--amp', type=str, default=None, choices=['bf16', 'fp16'],
                           help='run under torch.autocast in this half type (default: fp16 on a GPU, none on the CPU)')
    precision.add_argument('--fp32', action='store_true', help='full fp32 precision (the default on the CPU)')
    precision.add_argument('--fp16', action='store_true', help='the same as --amp fp16 (kept for old command lines)')
    parser.add_argument('--no_tf32', action='store_true',
                        help='no TF32 in fp32 convolutions on a GPU (PyTorch\'s default TF32: about 1e-3 relative error); '
                             'with --fp32 the result matches the CPU to about 1e-6')
    return parser.parse_args(argv)


def plan_outputs(paths, args, num_branches=None):
    """``{input: (output, [branch outputs])}``; exits naming them when two inputs would write the same file
    (``photo.png`` and ``photo.jpg`` with ``--ext png``) or an output would overwrite an input (the output
    folder is the input folder, so a second run would upscale the first one's results)."""
    if osp.isdir(args.input) and osp.realpath(args.output) == osp.realpath(args.input):
        sys.exit(f'error: the output folder {args.output!r} is the input folder: the results would be mixed with '
                 'the inputs (and a second run would upscale them again); choose another -o.')
    outputs, owner = {}, {}
    inputs = {osp.realpath(p): p for p in paths}
    clashes = []
    for path in paths:
        imgname, ext = osp.splitext(osp.basename(path))
        ext = '.png' if args.ext == 'png' else ext.lower()
        sr = osp.join(args.output, f'{imgname}_{args.suffix}{ext}')
        branches = [osp.join(args.output, f'{imgname}_{args.suffix}_branch{i + 1}{ext}')
                    for i in range(num_branches or 0)] if args.save_branches else []
        for out in [sr] + branches:
            real = osp.realpath(out)
            if real in owner:
                clashes.append(f'{owner[real]} and {path} would both write {out}')
            elif real in inputs:
                clashes.append(f'{path} would overwrite the input {inputs[real]}')
            owner.setdefault(real, path)
        outputs[path] = (sr, branches)
    if clashes:
        sys.exit('error: output names collide, nothing was written:\n  ' + '\n  '.join(clashes)
                 + '\nUse --ext auto (keeps each input\'s extension), another --suffix or another -o.')
    return outputs


def inference_precision(args, device):
    """``None`` (fp32), ``'bf16'`` or ``'fp16'`` from ``--amp`` / ``--fp32`` / ``--fp16`` and the device."""
    if args.fp32:
        return None
    if args.amp or args.fp16:
        return args.amp or 'fp16'
    return 'fp16' if device.type == 'cuda' else None


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.no_tf32:
        set_tf32(False)
    try:
        net, opts, source = load_network(args.model_path, args.opt, args.scale, args.param_key)
    except (UnsafeCheckpointError, ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    if net.head.in_channels != 3:
        sys.exit(f'error: the model takes {net.head.in_channels} input channels; this script feeds RGB (3)')
    amp = inference_precision(args, device)
    net = net.to(device)
    print(f'D2CSR x{net.upscale} from {args.model_path}{describe_param_key(net)}, network_g {source}: '
          + ', '.join(f'{k}={v}' for k, v in opts.items() if k != 'type'))
    print(f'device {device}, precision {amp_name(amp)}' + (' (torch.autocast, weights fp32)' if amp else ''))

    paths = list_images(args.input)
    if not paths:
        sys.exit(f'error: no images found in {args.input!r}')
    outputs = plan_outputs(paths, args, net.num_branches)
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as err:
        sys.exit(f'error: cannot create the output folder {args.output!r} ({err.strerror or err}); choose another '
                 '-o (a folder, not a file).')
    skipped = []
    # progress bars only on a terminal; piped or logged output gets one plain line per image instead
    interactive = sys.stderr.isatty()
    bar = tqdm(paths, unit='img', disable=not interactive)
    for index, path in enumerate(bar, 1):
        sr_path, branch_paths = outputs[path]
        bar.set_postfix_str(osp.basename(path))
        try:
            image = read_image(path)
        except UnreadableImage as err:
            skipped.append((path, str(err)))
            tqdm.write(f'skipped {path}: {err}')
            continue
        x = image_to_tensor(image).to(device)
        tiles = tqdm(total=0, unit='tile', leave=False, disable=args.tile <= 0 or not interactive)

        def progress(done, total, tiles=tiles):
            tiles.total = total
            tiles.update(done - tiles.n)

        try:
            with torch.no_grad(), autocast(device, amp):
                out = tiled_forward(net, x, tile=args.tile, tile_pad=args.tile_pad,
                                    return_branches=args.save_branches, output_device='cpu', progress=progress)
        except ValueError as err:
            sys.exit(f'error: {err}')
        finally:
            tiles.close()
        try:
            write_image(sr_path, tensor_to_rgb(out.sr), image)
            for branch_path, branch in zip(branch_paths, out.branches or []):
                write_image(branch_path, tensor_to_rgb(branch), image)
        except OSError as err:
            skipped.append((path, str(err)))
            tqdm.write(f'skipped {path}: {err}')
        else:
            if not interactive:
                print(f'[{index}/{len(paths)}] {path} -> {osp.basename(sr_path)}', flush=True)
        del out, x

    done = len(paths) - len(skipped)
    print(f'{done} of {len(paths)} images written to {args.output}')
    if skipped:
        print(f'{len(skipped)} skipped:')
        for path, reason in skipped:
            print(f'  {path}: {reason}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
