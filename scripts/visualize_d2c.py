"""One picture per image of D2C-SR at work, plus the data set's per-branch and oracle-fusion PSNR table.

    python scripts/visualize_d2c.py --lq datasets/RealSR_x4/test/LR --gt datasets/RealSR_x4/test/HR \\
        --model_path experiments/D2C_conv_x4/models/net_g_latest.pth -o results/D2C_x4_panels

Each panel shows the LR input, every divergent branch, the fused output, HR, the convergence weight maps as
heat maps, the oracle fusion and which branch the oracle picks, each image labelled with its PSNR (layout:
:mod:`d2csr.visualize`). LR and HR images are paired by file name (BasicSR's ``filename_tmpl: '{}'``);
without ``--gt`` the panels have no PSNRs. Writes ``<name>_panel.png`` and ``psnr_table.csv``, and prints
the table. Unreadable images are skipped and named; the exit status is 1 when anything was skipped.
"""
import argparse
import os
import os.path as osp
import sys

# torch, BasicSR and d2csr are imported in main(), after the arguments: --help answers at once


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lq', type=str, required=True, help='LR image or folder')
    parser.add_argument('--gt', type=str, default=None, help='HR folder (same file names as the LR images)')
    parser.add_argument('-o', '--output', type=str, default='results/D2C_panels', help='output folder')
    parser.add_argument('--model_path', type=str, required=True,
                        help='BasicSR checkpoint (net_g_*.pth) or the authors\' MegEngine pickle')
    parser.add_argument('-opt', type=str, default=None, help='options file with network_g (default: inferred)')
    parser.add_argument('--param_key', type=str, default=None,
                        help='checkpoint entry (default: params_ema when present, else params)')
    parser.add_argument('--crop_border', type=int, default=None, help='PSNR border (default: the scale)')
    parser.add_argument('--rgb', action='store_true', help='PSNR on RGB instead of the Y channel')
    parser.add_argument('--max_side', type=int, default=480, help='longer side of a panel cell; 0: full size')
    parser.add_argument('--tile', type=int, default=128, help='tile size in LR pixels (exact); 0: no tiling')
    parser.add_argument('--device', type=str, default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--no_tf32', action='store_true',
                        help='full fp32 convolutions on a GPU (PyTorch\'s default TF32: about 1e-3 relative error)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    from d2csr.convert import UnsafeCheckpointError
    from d2csr.evaluation import format_image_table, write_image_table
    from d2csr.loading import describe_param_key, load_network
    from d2csr.tiling import tiled_forward
    from d2csr.utils import device_from_flag, set_tf32
    from d2csr.utils.image_io import UnreadableImage, image_to_tensor, list_images, read_image, write_encoded
    from d2csr.utils.progress import ImageProgress
    from d2csr.visualize import make_panel

    device = device_from_flag(args.device)
    if args.no_tf32:
        set_tf32(False)
    try:
        net, _, _ = load_network(args.model_path, args.opt, param_key=args.param_key)
    except (UnsafeCheckpointError, ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    print(f'D2CSR x{net.upscale} from {args.model_path}{describe_param_key(net)}')
    net = net.to(device)
    scale = net.upscale
    psnr_opts = dict(crop_border=scale if args.crop_border is None else args.crop_border,
                     test_y_channel=not args.rgb)
    paths = list_images(args.lq)
    if not paths:
        sys.exit(f'error: no images found in {args.lq!r}')
    os.makedirs(args.output, exist_ok=True)
    rows, names, skipped = [], [], []
    progress = ImageProgress(paths)  # a bar on a terminal, one line per image in a pipe or log file
    for index, path in progress:
        name = osp.splitext(osp.basename(path))[0]
        progress.label(osp.basename(path))
        try:
            lq = image_to_tensor(read_image(path)).to(device)
            gt = None
            if args.gt:
                gt_path = osp.join(args.gt, osp.basename(path))
                if not osp.isfile(gt_path):
                    raise UnreadableImage(f'no HR image {gt_path}')
                gt = image_to_tensor(read_image(gt_path))
                h, w = lq.shape[-2] * scale, lq.shape[-1] * scale
                if gt.shape[-2] < h or gt.shape[-1] < w:
                    raise UnreadableImage(f'HR {tuple(gt.shape[-2:])} is smaller than x{scale} the LR '
                                          f'{tuple(lq.shape[-2:])}')
                gt = gt[..., :h, :w]  # HR cropped to scale x LR, as the data pipeline does
        except UnreadableImage as err:
            skipped.append((path, str(err)))
            progress.note(f'skipped {path}: {err}')
            continue
        out = tiled_forward(net, lq, tile=args.tile, return_branches=True, return_weights=True, output_device='cpu')
        panel, row = make_panel(lq.cpu(), out.branches, out.sr, out.weights, gt, scale, psnr_opts, args.max_side)
        panel_path = osp.join(args.output, f'{name}_panel.png')
        write_encoded(panel_path, panel)
        progress.done(index, f'{path} -> {osp.basename(panel_path)}')
        if row:
            rows.append(row)
            names.append(name)
    progress.close()
    if rows:
        write_image_table(osp.join(args.output, 'psnr_table.csv'), rows, names)
        kind = 'RGB' if args.rgb else 'Y'
        print(f'PSNR (dB, {kind} channel, border {psnr_opts["crop_border"]}); oracle = per pixel the branch '
              'closest to HR\n' + format_image_table(rows, names))
    print(f'{len(paths) - len(skipped)} panels written to {args.output}')
    if skipped:
        print(f'{len(skipped)} skipped:\n' + '\n'.join(f'  {p}: {r}' for p, r in skipped))
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
