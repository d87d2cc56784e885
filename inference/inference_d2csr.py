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
from d2csr.utils import resolve_device
from d2csr.convert import UnsafeCheckpointError, load_network
from d2csr.precision import amp_name, autocast
from d2csr.image_io import UnreadableImage, image_to_tensor, list_images, read_image, tensor_to_rgb, write_image
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
                        help='checkpoint entry to load (default: params, else params_ema)')
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
    return parser.parse_args(argv)


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
    try:
        net, opts, source = load_network(args.model_path, args.opt, args.scale, args.param_key)
    except (UnsafeCheckpointError, ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    if net.head.in_channels != 3:
        sys.exit(f'error: the model takes {net.head.in_channels} input channels; this script feeds RGB (3)')
    amp = inference_precision(args, device)
    net = net.to(device)
    print(f'D2CSR x{net.upscale} from {args.model_path}, network_g {source}: '
          + ', '.join(f'{k}={v}' for k, v in opts.items() if k != 'type'))
    print(f'device {device}, precision {amp_name(amp)}' + (' (torch.autocast, weights fp32)' if amp else ''))

    paths = list_images(args.input)
    if not paths:
        sys.exit(f'error: no images found in {args.input!r}')
    os.makedirs(args.output, exist_ok=True)
    skipped = []
    bar = tqdm(paths, unit='img')
    for path in bar:
        imgname, ext = osp.splitext(osp.basename(path))
        ext = '.png' if args.ext == 'png' else ext.lower()
        bar.set_postfix_str(imgname)
        try:
            image = read_image(path)
        except UnreadableImage as err:
            skipped.append((path, str(err)))
            tqdm.write(f'skipped {path}: {err}')
            continue
        x = image_to_tensor(image).to(device)
        tiles = tqdm(total=0, unit='tile', leave=False, disable=args.tile <= 0)

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
            write_image(osp.join(args.output, f'{imgname}_{args.suffix}{ext}'), tensor_to_rgb(out.sr), image)
            for i, branch in enumerate(out.branches or []):
                write_image(osp.join(args.output, f'{imgname}_{args.suffix}_branch{i + 1}{ext}'),
                            tensor_to_rgb(branch), image)
        except OSError as err:
            skipped.append((path, str(err)))
            tqdm.write(f'skipped {path}: {err}')
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
