"""Inference and visualization load the weights users expect: ``params_ema`` when present, ``--param_key`` overrides."""
import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import load_script
from d2csr.archs import D2CSR
from d2csr.loading import load_model, load_network
from d2csr.utils.checkpoint import CheckpointFormatError
from d2csr.utils.image_io import image_to_tensor, read_image

NET = dict(type='D2CSR', num_feat=8, upscale=2, depth=1, width=2, backbone='imdn',
           backbone_opt=dict(num_block=1, distill_rate=0.5), upsampler='pixelshuffledirect', fusion_feat=8)


def two_nets():
    opts = {k: v for k, v in NET.items() if k != 'type'}
    torch.manual_seed(0)
    plain = D2CSR(**opts).eval()
    torch.manual_seed(1)
    ema = D2CSR(**opts).eval()
    return plain, ema


@pytest.fixture
def ema_checkpoint(tmp_path):
    """What BasicSR saves with ``ema_decay > 0``: both entries, different weights."""
    plain, ema = two_nets()
    path = tmp_path / 'net_g_latest.pth'
    torch.save({'params': plain.state_dict(), 'params_ema': ema.state_dict()}, path)
    (tmp_path / 'net.yml').write_text(yaml.safe_dump({'network_g': NET}))
    return path, plain, ema


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_params_ema_is_preferred_and_param_key_overrides(ema_checkpoint):
    path, plain, ema = ema_checkpoint
    net, _, _ = load_network(str(path), str(path.parent / 'net.yml'))
    assert net.param_key == 'params_ema' and same_weights(net, ema)
    net, _, _ = load_network(str(path), str(path.parent / 'net.yml'), param_key='params')
    assert net.param_key == 'params' and same_weights(net, plain)
    with pytest.raises(CheckpointFormatError, match=r"no 'ema' entry .*params_ema.*--param_key"):
        load_network(str(path), str(path.parent / 'net.yml'), param_key='ema')
    # a checkpoint without EMA still gives its params
    torch.save({'params': plain.state_dict()}, path.parent / 'plain.pth')
    net, _ = load_model(str(path.parent / 'plain.pth'), dict(NET))
    assert net.param_key == 'params' and same_weights(net, plain)


@pytest.mark.parametrize('param_key', [None, 'params'])
def test_inference_script_uses_and_logs_the_key(ema_checkpoint, tmp_path, capsys, param_key):
    """Through inference/inference_d2csr.py, with a D2C-IMDN (pixelshuffledirect tails, tiled)."""
    path, plain, ema = ema_checkpoint
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (9, 10, 3), dtype=np.uint8), (3, 3), 0)
    cv2.imwrite(str(tmp_path / 'img.png'), image)
    script = load_script('inference/inference_d2csr.py')
    argv = ['-i', str(tmp_path / 'img.png'), '-o', str(tmp_path / 'out'), '--model_path', str(path),
            '-opt', str(path.parent / 'net.yml'), '--tile', '4', '--device', 'cpu']
    if param_key:
        argv += ['--param_key', param_key]
    assert script.main(argv) == 0
    expected_key, expected_net = (param_key, plain) if param_key else ('params_ema', ema)
    assert f'(weights: {expected_key})' in capsys.readouterr().out
    with torch.no_grad():
        expected = expected_net(image_to_tensor(read_image(str(tmp_path / 'img.png'))))
    written = cv2.imread(str(tmp_path / 'out' / 'img_D2CSR.png'))[..., ::-1].astype(np.float32) / 255
    ref = expected[0].clamp(0, 1).permute(1, 2, 0).numpy()
    assert np.abs(written - ref).max() <= 1 / 255 + 1e-6


def test_visualize_script_logs_the_key(ema_checkpoint, tmp_path, capsys):
    path, _, _ = ema_checkpoint
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / 'img.png'), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    script = load_script('scripts/visualize_d2c.py')
    script.main(['--lq', str(tmp_path / 'img.png'), '-o', str(tmp_path / 'panels'), '--model_path', str(path),
                 '-opt', str(path.parent / 'net.yml'), '--device', 'cpu'])
    assert '(weights: params_ema)' in capsys.readouterr().out
