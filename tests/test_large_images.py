"""Large images in bounded memory: the exact banded schedule's peak, the plan that predicts it, the bounded mode,
inference refusing what would not fit (and saying what does), out-of-memory as a message, tiled validation."""
import re

import cv2
import numpy as np
import pytest
import torch

import d2csr.memory as memory
from conftest import TINY_NET, load_script, results_dir, run_entry, tiny_options, unique_name, write_options
from d2csr.archs import D2CSR
from d2csr.bounded import ChannelStatistics
from d2csr.convert import save_basicsr_checkpoint
from d2csr.memory import LiveBytes, plan_run
from d2csr.tiling import bounded_forward, network_radius, tiled_forward
from d2csr.upscaler import Upscaler, is_out_of_memory

GIB = 2**30


def small_rcan(seed=0, **kwargs):
    torch.manual_seed(seed)
    opts = dict(num_feat=16, num_group=1, num_block=2, squeeze_factor=4, upscale=2, fusion_feat=8)
    opts.update(kwargs)
    net = D2CSR(**opts).eval()
    with torch.no_grad():  # channel attention whose scale really depends on the statistics
        for name, p in net.named_parameters():
            if 'rcab.3' in name:
                p.mul_(3)
    return net


def test_the_default_x4_network_needs_under_1_4_gib_per_lr_megapixel():
    """The banded schedule's peak (planned: the same allocations as the run, see the next test) for the default
    network on a 6-megapixel LR photo, against the LR half in one piece (what --tile did before)."""
    net = D2CSR(upscale=4, mean_shift='learnable').eval()
    small, _ = plan_run(net, (1, 3, 1000, 1500))
    large, _ = plan_run(net, (1, 3, 2000, 3000))
    assert large / GIB / 6 <= 1.4
    assert (large - small) / GIB / 4.5 <= 1.4  # what each further megapixel adds
    whole_lr, _ = plan_run(net, (1, 3, 2000, 3000), lr='whole')
    assert whole_lr / GIB / 6 > 2.0


@pytest.mark.parametrize('return_extras', [False, True])
def test_the_plan_holds_what_the_run_holds(return_extras):
    """Peak tensor bytes of a real run (followed through every op) equal its plan on the meta device."""
    net = small_rcan(mean_shift='learnable', bicubic_skip=True)
    x = torch.rand(1, 3, 40, 36)
    kwargs = dict(return_branches=return_extras, return_weights=return_extras)
    with torch.no_grad(), LiveBytes(external=[x, *net.parameters(), *net.buffers()]) as live:
        tiled_forward(net, x, tile=8, band_rows=5, **kwargs)
    planned, steps = plan_run(net, tuple(x.shape), tile=8, band_rows=5, **kwargs)
    assert planned == live.peak
    seen = []
    tiled_forward(net, x, tile=8, band_rows=5, progress=lambda done, total: seen.append((done, total)), **kwargs)
    assert seen[-1] == (steps, steps) and len(seen) == steps


def test_bounded_memory_does_not_grow_with_the_image():
    net = D2CSR(upscale=4).eval()
    compute = [plan_run(net, (1, 3, h, w), mode='bounded', plan_outputs=False)[0] for h, w in ((1500, 1500),
                                                                                                (3000, 4000))]
    assert compute[0] == compute[1] < 1.5 * GIB
    with_output = plan_run(net, (1, 3, 3000, 4000), mode='bounded')[0]
    assert with_output - compute[1] == pytest.approx(3000 * 4000 * 16 * 3 * 4, rel=0.05)  # the output itself


def test_the_bounded_mode_takes_channel_statistics_from_a_first_pass(monkeypatch):
    net = small_rcan()
    x = torch.rand(1, 3, 80, 64)
    x[..., :40, :] *= 0.3  # the halves differ: each tile's own statistics are not the image's
    assert 16 + 2 * network_radius(net) < 64  # tiles smaller than the image
    gathered = []
    end_pass = ChannelStatistics.end_pass
    monkeypatch.setattr(ChannelStatistics, 'end_pass', lambda self: (end_pass(self), gathered.append(self)))
    with torch.no_grad():
        exact = net(x)
        first = net.nodes[0][0].residual_group[0]  # its input is exact in every tile: so are its statistics
        whole_image_mean = first.residual(net.head(net._sub_mean(x))).mean((2, 3))
    deviation = {p: (bounded_forward(net, x, tile=16, passes=p).sr - exact).abs().max() for p in (1, 2)}
    assert len(gathered) == 1  # passes=2: one statistics pass
    assert torch.allclose(gathered[0].means[first], whole_image_mean, atol=1e-6)
    assert deviation[1] > 1e-5  # Real-ESRGAN-style tiles: each pools over itself
    assert deviation[2] < deviation[1] / 10


# ------------------------------------------------------------------------------------------------------------------
def tiny_model(tmp_path, **kwargs):
    torch.manual_seed(0)
    net = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, fusion_feat=8, **kwargs).eval()
    path = tmp_path / 'net.pth'
    save_basicsr_checkpoint(net, path)
    return net, path


def test_inference_refuses_an_image_that_would_not_fit_and_says_what_does(tmp_path, monkeypatch, capsys):
    _, model = tiny_model(tmp_path)
    folder = tmp_path / 'in'
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / 'a_small.png'), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / 'b_large.png'), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    upscaler = Upscaler(str(model), device='cpu')
    small, large = (upscaler.predict(h, w).device_bytes for h, w in ((8, 8), (120, 160)))
    room = (small + large) // 2
    monkeypatch.setattr(memory, 'available_memory', lambda device='cpu': room)
    script = load_script('inference/inference_d2csr.py')
    out = tmp_path / 'out'
    assert script.main(['-i', str(folder), '-o', str(out), '--model_path', str(model), '--device', 'cpu']) == 1
    stdout = capsys.readouterr().out
    assert (out / 'a_small_D2CSR.png').is_file() and not (out / 'b_large_D2CSR.png').exists()
    assert '1 of 2 images written' in stdout
    reason = stdout.split('skipped:')[1]
    assert f'b_large.png (160x120 LR pixels) needs about {large / GIB:.2f} GiB' in reason
    assert f'only {room / GIB:.2f} GiB is available' in reason and '--memory bounded' in reason
    w, h = map(int, re.search(r'largest image of this shape that fits is about (\d+)x(\d+)', reason).groups())
    assert upscaler.predict(h, w).device_bytes <= room < upscaler.predict(round(h * 1.2), round(w * 1.2)).device_bytes
    assert abs(w / h - 160 / 120) < 0.1


def test_an_allocation_that_fails_anyway_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    _, model = tiny_model(tmp_path)
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), np.full((8, 9, 3), 100, np.uint8))

    def fail(*args, **kwargs):
        raise RuntimeError('[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you '
                           'tried to allocate 123456789 bytes.')

    monkeypatch.setattr('d2csr.upscaler.tiled_forward', fail)
    script = load_script('inference/inference_d2csr.py')
    assert script.main(['-i', str(image), '-o', str(tmp_path / 'out'), '--model_path', str(model),
                        '--device', 'cpu']) == 1
    reason = capsys.readouterr().out.split('skipped:')[1]
    assert 'ran out of memory on cpu upscaling a 9x8 image' in reason and '--memory bounded' in reason
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError('shape mismatch'))
    monkeypatch.setattr('d2csr.upscaler.tiled_forward', lambda *a, **k: (_ for _ in ()).throw(RuntimeError('bug')))
    with pytest.raises(RuntimeError, match='bug'):  # other errors are not dressed up as memory
        script.main(['-i', str(image), '-o', str(tmp_path / 'out'), '--model_path', str(model), '--device', 'cpu'])


def test_bounded_mode_from_the_command_line(tmp_path):
    network = dict(backbone='edsr', backbone_opt=dict(num_block=1))  # no channel attention
    net, model = tiny_model(tmp_path, **network)
    options = write_options({'network_g': dict(type='D2CSR', num_feat=8, upscale=2, fusion_feat=8, **network)},
                            tmp_path / 'net.yml')
    rng = np.random.default_rng(0)
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), rng.integers(0, 65536, (40, 36, 3), dtype=np.uint16))
    script = load_script('inference/inference_d2csr.py')
    for memory_mode in ('exact', 'bounded'):
        assert script.main(['-i', str(image), '-o', str(tmp_path / memory_mode), '--model_path', str(model),
                            '-opt', str(options), '--memory', memory_mode, '--bounded_tile', '8',
                            '--device', 'cpu']) == 0
    exact, bounded = (cv2.imread(str(tmp_path / m / 'a_D2CSR.png'), cv2.IMREAD_UNCHANGED).astype(int)
                      for m in ('exact', 'bounded'))
    assert np.abs(exact - bounded).max() <= 1  # local backbone, tiles widened by its radius: exact


# ------------------------------------------------------------------------------------------------------------------
def test_validation_tiles_large_images_with_the_same_metrics(photo_data, tmp_path, monkeypatch):
    import d2csr.models.d2csr_model as model_module

    torch.manual_seed(0)
    net = D2CSR(**{k: v for k, v in TINY_NET.items() if k != 'type'})
    weights = tmp_path / 'net.pth'
    save_basicsr_checkpoint(net, weights)
    calls = []
    real = model_module.tiled_forward
    monkeypatch.setattr(model_module, 'tiled_forward', lambda *a, **k: calls.append(k['tile']) or real(*a, **k))
    logs = {}
    for tile in (0, 8):
        name = unique_name(f'val_tile{tile}')
        opt = tiny_options(photo_data, name, pretrain=str(weights))
        opt['datasets'] = {'test_1': dict(opt['datasets']['val'])}
        opt['val'].update(save_img=False, tile=tile)
        del opt['train']
        run_entry('test', '-opt', write_options(opt, tmp_path / f'test{tile}.yml'))
        log = next(results_dir(name).glob('test_*.log')).read_text()
        logs[tile] = {k: float(v) for k, v in re.findall(r'# (\w+): ([-0-9.]+)', log)}
    assert calls and set(calls) == {8}  # tiles only where asked
    assert {'psnr', 'ssim', 'psnr_branch1', 'psnr_oracle', 'weight_mad'} <= set(logs[0])
    assert logs[8] == pytest.approx(logs[0], abs=1e-4)
    with pytest.raises(ValueError, match='val:tile must be auto, 0'):
        model_module.val_tile_option('yes')


def test_validation_tile_auto_follows_the_memory_available(monkeypatch):
    from d2csr.models.d2csr_model import D2CModel

    model = D2CModel.__new__(D2CModel)  # only the tile choice: no options, datasets or training set-up
    model.val_tile, model._whole_per_pixel, model.val_amp = 'auto', None, None
    model.lq = torch.rand(1, 3, 300, 400)
    net = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=4).eval()
    monkeypatch.setattr(memory, 'available_memory', lambda device='cpu': 64 * GIB)
    assert model.validation_tile(net) == 0
    monkeypatch.setattr(memory, 'available_memory', lambda device='cpu': GIB // 4)
    assert model.validation_tile(net) == 128


def test_the_lr_half_runs_in_one_piece_only_where_that_surely_fits(tmp_path, monkeypatch):
    _, model = tiny_model(tmp_path)
    upscaler = Upscaler(str(model), device='cpu')
    img = np.random.default_rng(0).integers(0, 256, (30, 26, 3), dtype=np.uint8)
    monkeypatch.setattr(memory, 'available_memory', lambda device='cpu': 64 * GIB)
    assert upscaler.lr_half(30, 26) == 'whole'  # faster, and there is room
    fast = upscaler.enhance(img)
    monkeypatch.setattr(memory, 'available_memory', lambda device='cpu': 100 * 2**20)
    assert upscaler.lr_half(30, 26) == 'banded'
    assert np.array_equal(upscaler.enhance(img), fast)  # the same result either way
