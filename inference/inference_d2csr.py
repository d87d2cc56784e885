"""Super-resolve real images of any size with a trained D2C-SR model.

    python inference/inference_d2csr.py -i IMAGE_OR_FOLDER -o results/D2CSR --model_path net_g.pth

``--model_path`` takes a BasicSR checkpoint (``net_g_*.pth``) or the authors' MegEngine pickle. The network
configuration comes from ``-opt`` (an options file with ``network_g``), else from the options file BasicSR saved
beside a training checkpoint (``experiments/<name>/*.yml``), else it is inferred from the weights.
8-bit / 16-bit, gray / colour / colour + alpha images come out in the same kind as ``<name>_<suffix>.<ext>``;
a photo's EXIF orientation is applied on reading (the result is stored upright, as viewers show the photo).
Unreadable images (a JPEG cut short included) are skipped and named; the exit status is 1 when anything was
skipped. Every output file appears whole or not at all.

Memory: by default (``--memory exact``) the result equals the untiled network's up to float rounding, with the LR
half in bands and the HR half in tiles of ``--tile`` LR pixels (``0``: no tiling at all): about 1.3 GiB per LR
megapixel on the CPU in fp32 with the default x4 network. Before each image the peak memory is predicted; an image
that would not fit in what is free is skipped with the prediction, what is free and the largest size that fits.
``--memory bounded`` runs the whole network on overlapping tiles (``--bounded_tile``) with channel attention's
whole-image statistics from a first pass: memory independent of the image's size beyond the output itself, and
an approximation of the exact result (its measured deviation is in the inference docs).

Precision (Real-ESRGAN's convention): on a GPU the network runs in half precision (fp16 under
``torch.autocast``) unless ``--fp32`` is given; on the CPU it runs in fp32 unless ``--amp bf16`` is given
(fast on CPUs with AVX512-BF16 or AMX). ``--amp bf16|fp16`` picks the half type on either device. The weights
stay fp32 (one autocast context per image, no copy of the model); the output is computed in fp32 from
the network's fp32 result.

The work is done by :class:`d2csr.Upscaler` (the Python API); this script reads and writes the files.
"""
import argparse
import os
import os.path as osp
import sys


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
    parser.add_argument('--memory', type=str, default='exact', choices=['exact', 'bounded'],
                        help='exact (default): equal to the untiled network, about 1.3 GiB per LR megapixel; bounded: '
                             'memory independent of the image size, approximate (see the inference docs)')
    parser.add_argument('--bounded_tile', type=int, default=512,
                        help='--memory bounded: tile size in LR pixels of the whole network')
    parser.add_argument('--passes', type=int, default=2,
                        help='--memory bounded: passes over the tiles (1: per-tile statistics, as Real-ESRGAN tiles)')
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
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error('--passes must be at least 1')
    if args.bounded_tile < 1:
        parser.error('--bounded_tile must be at least 1')
    return args


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
    from d2csr.upscaler import default_amp

    if args.fp32:
        return None
    if args.amp or args.fp16:
        return args.amp or 'fp16'
    return default_amp(device, 'auto')


def main(argv=None):
    args = parse_args(argv)  # before torch is imported: --help and argument errors are quick
    import d2csr  # noqa: F401  (compatibility shims and registries)
    from d2csr.convert import UnsafeCheckpointError
    from d2csr.memory import MemoryRefused, OutOfMemory
    from d2csr.upscaler import Upscaler
    from d2csr.utils import device_from_flag, set_tf32
    from d2csr.utils.image_io import UnreadableImage, list_images, read_image, write_image
    from d2csr.utils.progress import ImageProgress

    device = device_from_flag(args.device)
    if args.no_tf32:
        set_tf32(False)
    try:
        upscaler = Upscaler(args.model_path, args.opt, device, args.param_key, args.scale, args.tile, args.tile_pad,
                            memory=args.memory, bounded_tile=args.bounded_tile, passes=args.passes,
                            amp=inference_precision(args, device))
    except (UnsafeCheckpointError, ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    print(upscaler.describe())

    paths = list_images(args.input)
    if not paths:
        sys.exit(f'error: no images found in {args.input!r}')
    outputs = plan_outputs(paths, args, upscaler.net.num_branches)
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as err:
        sys.exit(f'error: cannot create the output folder {args.output!r} ({err.strerror or err}); choose another '
                 '-o (a folder, not a file).')
    skipped = []
    progress = ImageProgress(paths)  # a bar on a terminal, one line per image in a pipe or log file

    def skip(path, reason):
        skipped.append((path, reason))
        progress.note(f'skipped {path}: {reason}')

    for index, path in progress:
        sr_path, branch_paths = outputs[path]
        progress.label(osp.basename(path))
        try:
            image = read_image(path)
        except UnreadableImage as err:
            skip(path, str(err))
            continue
        if image.note:
            progress.note(f'{path}: {image.note}')
        steps = progress.inner('step')
        try:
            sr, branches = upscaler.upscale_image(image, args.save_branches,
                                                  steps.update_to if progress.interactive else None, what=path)
        except (MemoryRefused, OutOfMemory) as err:
            skip(path, str(err))
            continue
        except ValueError as err:
            sys.exit(f'error: {err}')
        finally:
            steps.close()
        try:
            write_image(sr_path, sr, image)
            for branch_path, branch in zip(branch_paths, branches or []):
                write_image(branch_path, branch, image)
        except OSError as err:
            skip(path, str(err))
        else:
            progress.done(index, f'{path} -> {osp.basename(sr_path)}')
        del sr, branches, image
    progress.close()

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
