"""Mixed precision for inference and validation: the ``amp`` option values and ``val: amp``."""
import pytest
import torch

from conftest import TINY_NET
from d2csr.models.d2csr_model import D2CModel
from d2csr.utils.precision import amp_dtype, amp_name, autocast


def test_amp_option_values_are_checked_and_named():
    assert amp_dtype(None) is None and amp_dtype('fp32') is None
    assert amp_dtype('bf16') is torch.bfloat16 and amp_dtype('FP16') is torch.float16
    assert amp_dtype(torch.bfloat16) is torch.bfloat16
    assert amp_name('bf16') == 'bf16' and amp_name(None) == 'fp32'
    with pytest.raises(ValueError, match=r'val:amp must be one of bf16, fp16 or ~'):
        amp_dtype('int8', 'val:amp')
    with autocast(torch.device('cpu'), 'bf16'):
        assert torch.get_autocast_dtype('cpu') == torch.bfloat16 and torch.is_autocast_enabled('cpu')
    with autocast('cpu', None):
        assert not torch.is_autocast_enabled('cpu')


def model_options(amp):
    opt = {'name': 'amp_test', 'model_type': 'D2CModel', 'scale': 4, 'num_gpu': 0, 'is_train': False,
           'dist': False, 'rank': 0, 'world_size': 1, 'network_g': dict(TINY_NET),
           'path': {'pretrain_network_g': None, 'strict_load_g': True}, 'val': {'amp': amp}}
    return opt


def test_validation_runs_under_val_amp_and_returns_fp32():
    torch.manual_seed(0)
    lq = torch.rand(1, 3, 12, 10)
    outputs = {}
    for amp in (None, 'bf16'):
        torch.manual_seed(0)  # the same weights
        model = D2CModel(model_options(amp))
        model.feed_data({'lq': lq})
        model.test()
        assert model.output.dtype == model.weights.dtype == torch.float32
        assert all(b.dtype == torch.float32 for b in model.branches)
        assert all(p.dtype == torch.float32 for p in model.net_g.parameters())  # weights stay fp32
        outputs[amp] = model.output
    diff = (outputs['bf16'] - outputs[None]).abs().max().item()
    assert 0 < diff < 0.05
    with pytest.raises(ValueError, match='val:amp'):
        D2CModel(model_options('half'))
