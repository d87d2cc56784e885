"""Full fp32 on a GPU: ``tf32: false`` in the options (test and train) and ``--no_tf32`` in inference turn
PyTorch's TF32 convolutions and matmuls off (the flags are global; nothing changes on the CPU)."""
import cv2
import numpy as np
import pytest
import torch
from basicsr.models import build_model

from conftest import TINY_NET, load_script, tiny_options
from d2csr.archs import D2CSR
from d2csr.convert import save_basicsr_checkpoint


@pytest.fixture(autouse=True)
def tf32_flags():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def flags():
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def build_test_model(tmp_path, **top):
    opt = tiny_options(tmp_path, 'tf32', network=dict(TINY_NET, num_feat=8, fusion_feat=8))
    del opt['train']
    opt['datasets'] = {'test_1': dict(opt['datasets']['val'], phase='test', scale=4)}
    opt.update(is_train=False, dist=False, rank=0, world_size=1, **top)
    return build_model(opt)


def test_options_tf32_false_gives_full_fp32(tmp_path):
    build_test_model(tmp_path)
    assert flags() == (True, True)  # not set: PyTorch's own settings stay
    build_test_model(tmp_path, tf32=False)
    assert flags() == (False, False)
    with pytest.raises(ValueError, match='tf32 must be true or false'):
        build_test_model(tmp_path, tf32='off')


def test_inference_no_tf32(tmp_path):
    torch.manual_seed(0)
    save_basicsr_checkpoint(D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, fusion_feat=8),
                            tmp_path / 'net.pth')
    cv2.imwrite(str(tmp_path / 'a.png'), np.full((6, 7, 3), 128, np.uint8))
    script = load_script('inference/inference_d2csr.py')
    args = ['-i', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'out'), '--model_path', str(tmp_path / 'net.pth'),
            '--device', 'cpu']
    assert script.main(args) == 0 and flags() == (True, True)
    assert script.main(args + ['--no_tf32']) == 0 and flags() == (False, False)
