"""Exact tiled inference and the inference script on every image kind."""

import cv2
import numpy as np
import pytest
import torch

import d2csr.tiling as tiling
from conftest import ROOT, load_script, run_script
from d2csr.archs import D2CSR
from d2csr.convert import save_basicsr_checkpoint
from d2csr.utils.image_io import image_to_tensor, read_image
from d2csr.tiling import receptive_radius, tiled_forward



def small_net(seed=0, **kwargs):
    torch.manual_seed(seed)
    opts = dict(num_feat=8, num_group=1, num_block=1, squeeze_factor=4)
    opts.update(kwargs)
    net = D2CSR(**opts).eval()
    with torch.no_grad():  # a convergence net whose weights really vary over the image
        for p in net.fusion.parameters():
            p.mul_(4)
    return net


@pytest.mark.parametrize('kwargs', [
    dict(upscale=2), dict(upscale=3), dict(upscale=4), dict(upscale=8),
    dict(upscale=4, bicubic_skip=True, mean_shift='learnable'),
    dict(upscale=2, depth=3, width=2, deep_residual=False),
])
def test_tiled_equals_untiled(kwargs):
    net = small_net(**kwargs)
    x = torch.rand(1, 3, 13, 11)
    with torch.no_grad():
        branches = net.forward_branches(x)
        sr, weights = net.fuse(branches)
    for tile, pad in ((5, None), (7, receptive_radius(net) + 3)):
        out = tiled_forward(net, x, tile=tile, tile_pad=pad, return_branches=True, return_weights=True)
        assert (out.sr - sr).abs().max() <= 1e-4
        assert (out.weights - weights).abs().max() <= 1e-4
        assert max((a - b).abs().max() for a, b in zip(out.branches, branches)) <= 1e-4
    assert tiled_forward(net, x, tile=7).branches is None  # P full-size branches only when asked


def test_tiles_cover_the_image_once_and_respect_the_size():
    boxes = tiling.tile_boxes(37, 29, 6)
    covered = np.zeros((37, 29), int)
    for y0, y1, x0, x1 in boxes:
        assert 0 < y1 - y0 <= 6 and 0 < x1 - x0 <= 6
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all() and len(boxes) == 7 * 5
    assert tiling.tile_boxes(37, 29, 0) == [(0, 37, 0, 29)]


def test_tiles_without_enough_context_are_refused_and_would_be_wrong(monkeypatch):
    net = small_net(upscale=4)
    x = torch.rand(1, 3, 16, 16)
    radius = receptive_radius(net)
    with pytest.raises(ValueError, match='receptive radius'):
        tiled_forward(net, x, tile=4, tile_pad=radius - 1)
    with torch.no_grad():
        sr = net(x)
    monkeypatch.setattr(tiling, 'receptive_radius', lambda _: 0)  # what too little context would give
    assert (tiled_forward(net, x, tile=4, tile_pad=1).sr - sr).abs().max() > 1e-3


def write_kinds(folder, rng):
    """One small image of every kind; returns {file name: (cv2 array as written)}."""
    base = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    base = cv2.GaussianBlur(base, (3, 3), 0)
    images = {
        'rgb8.png': base,
        'rgb16.png': base.astype(np.uint16) * 257 + rng.integers(0, 257, base.shape).astype(np.uint16),
        'gray8.png': base[..., 0],
        'gray16.png': base[..., 1].astype(np.uint16) * 257,
        'rgba8.png': np.concatenate([base, np.linspace(0, 255, 120).reshape(10, 12, 1).astype(np.uint8)], axis=2),
        'photo.jpg': base,
    }
    for name, img in images.items():
        assert cv2.imwrite(str(folder / name), img)
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')
    (folder / 'empty.jpg').write_bytes(b'')
    (folder / 'notes.txt').write_text('not an image; ignored')
    return {name: cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED) for name in images}


def test_inference_script_keeps_every_image_kind_and_reports_skipped_files(tmp_path):
    scale = 3
    net = small_net(upscale=scale, mean_shift='learnable')
    model = tmp_path / 'net_g.pth'
    save_basicsr_checkpoint(net, model)
    inputs, out_dir = tmp_path / 'in', tmp_path / 'out'
    inputs.mkdir()
    written = write_kinds(inputs, np.random.default_rng(0))
    proc = run_script(ROOT / 'inference' / 'inference_d2csr.py', '-i', inputs, '-o', out_dir, '--model_path', model,
                      '--tile', '6', '--save_branches')
    assert proc.returncode == 1, proc.stderr[-3000:]  # something was skipped
    assert '6 of 8 images written' in proc.stdout
    assert 'broken.png' in proc.stdout and 'empty.jpg' in proc.stdout and 'notes.txt' not in proc.stdout

    for name, src in written.items():
        stem, ext = name.rsplit('.', 1)
        out = cv2.imread(str(out_dir / f'{stem}_D2CSR.{ext}'), cv2.IMREAD_UNCHANGED)
        assert out is not None, name
        assert out.dtype == src.dtype and out.ndim == src.ndim, name
        assert out.shape[:2] == (src.shape[0] * scale, src.shape[1] * scale), name
        if src.ndim == 3:
            assert out.shape[2] == src.shape[2], name
        for i in range(1, 5):
            assert (out_dir / f'{stem}_D2CSR_branch{i}.{ext}').is_file()
        # the values are the network's output on the image (untiled), in the image's own range
        image = read_image(str(inputs / name))
        with torch.no_grad():
            ref = net(image_to_tensor(image))[0].clamp(0, 1).permute(1, 2, 0).numpy()
        max_value = 65535 if src.dtype == np.uint16 else 255
        expected = ref[..., ::-1] * max_value
        if src.ndim == 2:
            bgr = np.ascontiguousarray(ref[..., ::-1], dtype=np.float32)
            expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) * max_value
        got = out[..., :3].astype(np.float64) if out.ndim == 3 else out.astype(np.float64)
        if ext == 'jpg':  # lossy: compare with the expected image through the same JPEG encoder
            ok, buf = cv2.imencode('.jpg', np.clip(expected.round(), 0, 255).astype(np.uint8),
                                   [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert np.abs(got - cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)).mean() < 1
        else:
            assert np.abs(got - expected).max() <= 0.51 * (257 if max_value == 65535 else 1) + 1e-6, name
    # alpha: upscaled bicubically, not through the network
    rgba = cv2.imread(str(out_dir / 'rgba8_D2CSR.png'), cv2.IMREAD_UNCHANGED)
    alpha = cv2.resize(written['rgba8.png'][..., 3].astype(np.float32) / 255, (36, 30), interpolation=cv2.INTER_CUBIC)
    assert np.abs(rgba[..., 3].astype(np.float64) - np.clip(alpha, 0, 1) * 255).max() <= 0.51
    # 16 bits are kept: not an 8-bit result scaled up
    assert np.any(cv2.imread(str(out_dir / 'rgb16_D2CSR.png'), cv2.IMREAD_UNCHANGED) % 257 != 0)


def test_inference_script_options_and_bad_input(tmp_path, capsys):
    script = load_script('inference/inference_d2csr.py')
    net = small_net(upscale=2)
    model = tmp_path / 'net_g.pth'
    save_basicsr_checkpoint(net, model)
    img = tmp_path / 'a.png'
    cv2.imwrite(str(img), np.full((6, 7, 3), 128, np.uint8))
    # the scale is checked against the checkpoint
    with pytest.raises(SystemExit, match=r'x2 model, but scale 4'):
        script.main(['-i', str(img), '-o', str(tmp_path / 'o'), '--model_path', str(model), '-s', '4'])
    # -opt: network_g from an options file; one that does not fit the weights is named
    opt = tmp_path / 'net.yml'
    opt.write_text('network_g:\n  type: D2CSR\n  num_feat: 8\n  num_group: 1\n  num_block: 1\n  squeeze_factor: 4\n'
                   '  upscale: 2\n')
    assert script.main(['-i', str(img), '-o', str(tmp_path / 'o'), '--model_path', str(model), '-opt', str(opt),
                        '--tile', '0', '--ext', 'png']) == 0
    assert cv2.imread(str(tmp_path / 'o' / 'a_D2CSR.png')).shape == (12, 14, 3)
    opt.write_text('network_g:\n  type: D2CSR\n  num_feat: 16\n  upscale: 2\n')
    with pytest.raises(SystemExit, match='does not fit network_g'):
        script.main(['-i', str(img), '-o', str(tmp_path / 'o'), '--model_path', str(model), '-opt', str(opt)])
    with pytest.raises(SystemExit, match='does not exist'):
        script.main(['-i', str(img), '-o', str(tmp_path / 'o'), '--model_path', str(tmp_path / 'missing.pth')])
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(model.read_bytes()[:2000])
    with pytest.raises(SystemExit, match='could not be loaded'):
        script.main(['-i', str(img), '-o', str(tmp_path / 'o'), '--model_path', str(truncated)])


def test_inference_script_precision_flags(tmp_path, capsys):
    """CPU: fp32 by default, ``--amp bf16`` under autocast (close to fp32, not equal), weights left fp32;
    a GPU defaults to fp16 and ``--fp32`` turns it off (Real-ESRGAN's convention)."""
    script = load_script('inference/inference_d2csr.py')
    net = small_net(upscale=2)
    model = tmp_path / 'net_g.pth'
    save_basicsr_checkpoint(net, model)
    rng = np.random.default_rng(0)
    img = tmp_path / 'a.png'
    cv2.imwrite(str(img), rng.integers(0, 65536, (9, 10, 3), dtype=np.uint16))  # 16-bit: bf16 shows
    outputs = {}
    for name, flags in (('default', []), ('fp32', ['--fp32']), ('bf16', ['--amp', 'bf16'])):
        out = tmp_path / name
        assert script.main(['-i', str(img), '-o', str(out), '--model_path', str(model), '--device', 'cpu',
                            '--tile', '4', *flags]) == 0
        outputs[name] = cv2.imread(str(out / 'a_D2CSR.png'), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535
        assert f"precision {'bf16' if name == 'bf16' else 'fp32'}" in capsys.readouterr().out
    assert np.array_equal(outputs['default'], outputs['fp32'])
    diff = np.abs(outputs['bf16'] - outputs['fp32'])
    assert 0 < diff.max() < 0.05
    with pytest.raises(SystemExit):  # one precision flag at a time
        script.parse_args(['-i', 'x', '--model_path', 'm', '--fp32', '--amp', 'bf16'])
    cuda, cpu = torch.device('cuda'), torch.device('cpu')
    assert script.inference_precision(script.parse_args(['-i', 'x', '--model_path', 'm']), cuda) == 'fp16'
    assert script.inference_precision(script.parse_args(['-i', 'x', '--model_path', 'm', '--fp32']), cuda) is None
    assert script.inference_precision(script.parse_args(['-i', 'x', '--model_path', 'm', '--amp', 'bf16']),
                                      cuda) == 'bf16'
    assert script.inference_precision(script.parse_args(['-i', 'x', '--model_path', 'm', '--fp16']), cpu) == 'fp16'
    assert script.inference_precision(script.parse_args(['-i', 'x', '--model_path', 'm']), cpu) is None


def test_tiled_bf16_autocast_matches_untiled_bf16_and_returns_fp32():
    net = small_net(upscale=3)
    x = torch.rand(1, 3, 13, 11)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            untiled = net(x)
            tiled = tiled_forward(net, x, tile=5).sr
    assert tiled.dtype == untiled.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert (tiled - untiled).abs().max() < 0.02 and (untiled - ref).abs().max() < 0.05
    assert not torch.equal(untiled, ref)
