"""Every D2CSR is rebuilt from its weights alone (d2csr's loader without -opt; spandrel uses the same reading):
every backbone x upsampler, and what leaves no trace is refused or defaulted, never guessed wrongly."""
import pytest
import torch

from d2csr.archs.branch_modules import branch_module_names
from d2csr.archs.d2csr_arch import UPSAMPLERS
from d2csr.archs.infer_options import NO_TRACE_OPTIONS, infer_network_options, is_d2csr_state
from d2csr.loading import load_model
from d2csr.utils.checkpoint import CheckpointFormatError
from tiny_d2c import TINY_BACKBONE_OPT, tiny_d2c

def build(backbone, **kwargs):
    net, opts = tiny_d2c(backbone, noise=0.0, **kwargs)
    return net, {k: v for k, v in opts.items() if k != 'type'}


def test_every_backbone_has_a_reader():
    assert sorted(TINY_BACKBONE_OPT) == branch_module_names()


@pytest.mark.parametrize('upsampler', [u for u in UPSAMPLERS if u != 'bicubic_input'])
@pytest.mark.parametrize('backbone', sorted(TINY_BACKBONE_OPT))
def test_the_loader_rebuilds_every_backbone_and_upsampler_from_the_weights(backbone, upsampler, tmp_path):
    net, opts = build(backbone, upsampler=upsampler, upscale=3 if upsampler == 'pixelshuffle' else 4,
                      mean_shift='learnable', deep_residual=backbone != 'vdsr')
    inferred = infer_network_options(net.state_dict())
    assert {k: inferred[k] for k in opts} == opts
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    loaded, _ = load_model(str(tmp_path / 'net.pth'))
    x = torch.rand(1, 3, 7, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_tree_shapes_channels_and_mean_shift():
    for kwargs in (dict(depth=3, width=1), dict(depth=1, width=4), dict(depth=2, width=3, upscale=8)):
        net, opts = build('edsr', **kwargs)
        inferred = infer_network_options(net.state_dict())
        assert {k: inferred[k] for k in opts} == opts
    # 'fixed' and 'none' store the same tensors: RGB networks get the default 'fixed', gray ones 'none'
    # (the default rgb_mean has three values)
    gray, _ = build('srresnet', num_in_ch=1, num_out_ch=1, mean_shift='none')
    assert infer_network_options(gray.state_dict())['mean_shift'] == 'none'
    rgb, _ = build('srresnet', mean_shift='none')
    assert infer_network_options(rgb.state_dict())['mean_shift'] == 'fixed'
    assert 'mean_shift' in NO_TRACE_OPTIONS and 'bicubic_skip' in NO_TRACE_OPTIONS


def test_bicubic_input_networks_need_their_options_file(tmp_path):
    net, _ = build('vdsr', upsampler='bicubic_input', upscale=4, bicubic_skip=True, mean_shift='none')
    torch.save({'params': net.state_dict()}, tmp_path / 'vdsr.pth')
    with pytest.raises(CheckpointFormatError, match=r'bicubic_input.*no trace.*-opt'):
        load_model(str(tmp_path / 'vdsr.pth'))


def test_other_networks_are_not_taken_for_d2csr():
    net, _ = build('rcan')
    state = net.state_dict()
    assert is_d2csr_state(state)
    assert not is_d2csr_state({**state, 'conv_first.weight': torch.zeros(1)})  # a name outside D2CSR
    assert not is_d2csr_state({k: v for k, v in state.items() if not k.startswith('fusion.')})
    with pytest.raises(CheckpointFormatError, match=r"outside D2CSR's modules \(\['conv_first.weight'\]\).*-opt"):
        infer_network_options({**state, 'conv_first.weight': torch.zeros(1)})
    odd = {k.replace('residual_group', 'blocks'): v for k, v in state.items()}  # a backbone no reader knows
    with pytest.raises(CheckpointFormatError, match='fit none of the backbones'):
        infer_network_options(odd)
