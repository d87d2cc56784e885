"""Panels of branches, fused output and weight maps; the PSNR table; the visualization script."""
import csv
import shutil

import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr
from basicsr.utils import tensor2img

from conftest import TINY_NET, experiment_dir, load_script, run_entry, tiny_options, unique_name, write_options
from d2csr.archs import D2CSR
from d2csr.convert import save_basicsr_checkpoint
from d2csr.loading import load_network
from d2csr.evaluation import bicubic_upsample
from d2csr.evaluation import psnr_row
from d2csr.visualize import LABEL_HEIGHT, make_panel



def example(scale=4, h=16, w=20, seed=0):
    torch.manual_seed(seed)
    net = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=scale).eval()
    lq = torch.rand(1, 3, h, w)
    gt = bicubic_upsample(lq, scale)  # the project's bicubic baseline (MATLAB imresize)
    with torch.no_grad():
        branches = [b.clamp(0, 1) for b in net.forward_branches(lq)]
        sr, weights = net.fuse(branches)
    return net, lq, gt, branches, sr, weights


def test_panel_layout_cells_and_psnr_labels():
    _, lq, gt, branches, sr, weights = example()
    height, width = gt.shape[-2:]
    panel, row = make_panel(lq, branches, sr, weights, gt, scale=4, max_side=0)
    cell_h = height + LABEL_HEIGHT
    assert panel.shape == (2 * cell_h, 8 * width, 3) and panel.dtype == np.uint8
    # top row: LR, branch 1..4, mean, fused, HR; bottom row: colour bar, W1..W4, |W - 1/P|, oracle, oracle pick
    mean = torch.stack(branches).mean(0)
    for col, img in ((1, branches[0]), (4, branches[3]), (5, mean), (6, sr), (7, gt)):
        np.testing.assert_array_equal(panel[LABEL_HEIGHT:cell_h, col * width:(col + 1) * width], tensor2img([img]))
    heat = cv2.applyColorMap(np.clip(weights[0, 2].numpy() * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(panel[cell_h + LABEL_HEIGHT:, 3 * width:4 * width], heat)
    # |W - 1/P| per pixel, on the scale 0 .. 2 (P - 1) / P^2 = 0.375
    dev = (weights[0] - 0.25).abs().mean(0).numpy() / 0.375
    heat = cv2.applyColorMap(np.clip(dev * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(panel[cell_h + LABEL_HEIGHT:, 5 * width:6 * width], heat)
    assert (panel[:LABEL_HEIGHT, width:2 * width] < 128).any()  # a label was drawn
    # PSNRs as the validation computes them (Y channel, border = scale)
    assert list(row) == ['bicubic', 'branch1', 'branch2', 'branch3', 'branch4', 'mean', 'fused', 'oracle']
    expected = calculate_psnr(tensor2img([branches[2]]), tensor2img([gt]), 4, test_y_channel=True)
    assert row['branch3'] == pytest.approx(expected)
    expected = calculate_psnr(tensor2img([mean]), tensor2img([gt]), 4, test_y_channel=True)
    assert row['mean'] == pytest.approx(expected)
    assert row['bicubic'] == float('inf')  # gt is the bicubic baseline itself here
    # per pixel the closest branch: on RGB the oracle beats every branch
    rgb = psnr_row(lq, branches, sr, gt, 4, dict(test_y_channel=False))
    assert rgb['oracle'] >= max(rgb[f'branch{i}'] for i in range(1, 5)) - 0.05
    # cells shrink to max_side
    small, _ = make_panel(lq, branches, sr, weights, gt, scale=4, max_side=40)
    assert small.shape == (2 * (32 + LABEL_HEIGHT), 8 * 40, 3)


def test_visualize_script_writes_panels_and_psnr_table(photo_data, tmp_path, capsys):
    net, *_ = example(seed=1)
    model = tmp_path / 'net_g.pth'
    save_basicsr_checkpoint(net, model)
    lq_dir = tmp_path / 'LR'
    shutil.copytree(photo_data / 'val' / 'LR', lq_dir)
    (lq_dir / 'unreadable.png').write_bytes(b'not a png')
    script = load_script('scripts/visualize_d2c.py')
    out = tmp_path / 'panels'
    code = script.main(['--lq', str(lq_dir), '--gt', str(photo_data / 'val' / 'HR'), '--model_path', str(model),
                        '-o', str(out), '--tile', '8', '--max_side', '0'])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 1 and 'unreadable.png' in printed  # skipped, named, exit status says so
    # not a terminal: whole lines, one per image, no progress bar's carriage returns or escape codes
    assert '\r' not in printed + captured.err and '\x1b' not in printed + captured.err
    assert f'[1/2] {lq_dir / "chelsea.png"} -> chelsea_panel.png' in printed.splitlines()
    hr = cv2.imread(str(photo_data / 'val' / 'HR' / 'chelsea.png'))
    panel = cv2.imread(str(out / 'chelsea_panel.png'))
    assert panel.shape == (2 * (hr.shape[0] + LABEL_HEIGHT), 8 * hr.shape[1], 3)
    with open(out / 'psnr_table.csv') as f:
        table = list(csv.reader(f))
    assert table[0] == ['image', 'bicubic', 'branch1', 'branch2', 'branch3', 'branch4', 'mean', 'fused', 'oracle']
    assert [r[0] for r in table[1:]] == ['chelsea', 'mean']
    lq = torch.from_numpy(cv2.imread(str(lq_dir / 'chelsea.png'))[..., ::-1].transpose(2, 0, 1) / 255.).float()[None]
    with torch.no_grad():
        fused = net(lq)
    expected = calculate_psnr(tensor2img([fused]), hr, 4, test_y_channel=True)
    assert float(table[1][7]) == pytest.approx(expected, abs=1e-3)
    assert 'oracle' in printed and 'chelsea' in printed and 'MATLAB imresize' in printed

    # without HR: same layout, no PSNR table
    no_gt = tmp_path / 'no_gt'
    assert script.main(['--lq', str(lq_dir / 'chelsea.png'), '--model_path', str(model), '-o', str(no_gt)]) == 0
    assert cv2.imread(str(no_gt / 'chelsea_panel.png')).shape == panel.shape
    assert not (no_gt / 'psnr_table.csv').exists()


def test_training_run_saves_panels_and_its_checkpoint_loads_with_its_options(photo_data, tmp_path):
    name = unique_name('panels')
    opt = tiny_options(photo_data, name, total_iter=2, network=dict(TINY_NET, bicubic_skip=True),
                       **{'val:val_freq': 2, 'val:save_panels': True})
    run_entry('train', '-opt', write_options(opt, tmp_path / 'train.yml'))
    folder = experiment_dir(name) / 'visualization' / 'panels' / 'photos_val_2'
    hr = cv2.imread(str(photo_data / 'val' / 'HR' / 'chelsea.png'))
    assert cv2.imread(str(folder / 'chelsea_panel.png')).shape == (2 * (hr.shape[0] + LABEL_HEIGHT), 8 * hr.shape[1], 3)
    assert (folder / 'psnr_table.csv').read_text().splitlines()[1].startswith('chelsea,')
    log = next(experiment_dir(name).glob('train_*.log')).read_text()
    assert 'Panels of photos_val' in log and 'oracle' in log
    # inference finds the options BasicSR saved beside the checkpoint: bicubic_skip leaves no trace in weights
    ckpt = experiment_dir(name) / 'models' / 'net_g_latest.pth'
    net, _, source = load_network(str(ckpt))
    assert net.bicubic_skip and source.endswith('train.yml')
    shutil.copy(ckpt, tmp_path / 'moved.pth')
    net, _, source = load_network(str(tmp_path / 'moved.pth'))
    assert not net.bicubic_skip and source.startswith('inferred from the weights')
