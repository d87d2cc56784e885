"""The D2C structure around other backbones (paper Table 3): option files, shapes, gradients, parameter
counts, the original RDN / IMDN / VDSR, option validation and a two-stage training run."""
from pathlib import Path

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.archs.arch_util import ResidualBlockNoBN
from basicsr.archs.rrdbnet_arch import RRDB

from conftest import ROOT, experiment_dir, run_entry, tiny_options, unique_name, write_options
from d2csr.archs import D2CSR
from d2csr.archs.branch_modules import branch_module_names, branch_module_options, build_branch_module
from d2csr.archs.imdn_arch import IMDB, IMDN, IMDNTrunk
from d2csr.archs.rdn_arch import RDN, RDNTrunk, ResidualDenseBlock
from d2csr.archs.vdsr_arch import VDSR, ConvReLUStack

OPTIONS = ROOT / 'options'
# option-file name -> (backbone key, what a tree node must contain)
BACKBONES = {
    'EDSR': ('edsr', ResidualBlockNoBN),
    'SRResNet': ('srresnet', ResidualBlockNoBN),
    'RRDBNet': ('rrdbnet', RRDB),
    'RDN': ('rdn', RDNTrunk),
    'IMDN': ('imdn', IMDNTrunk),
    'VDSR': ('vdsr', ConvReLUStack),
}


def count(module):
    return sum(p.numel() for p in module.parameters())


def network_opt(path, scale=None):
    opt = yaml.safe_load(Path(path).read_text())['network_g']
    if scale is not None:
        opt['scale' if opt['type'] == 'RRDBNet' else 'upscale'] = scale
    return opt


def test_every_backbone_has_its_option_files_and_they_agree():
    assert set(branch_module_names()) == {'rcan', *(key for key, _ in BACKBONES.values())}
    for name, (key, _) in BACKBONES.items():
        div = network_opt(OPTIONS / f'train_D2C-{name}_div_x4.yml')
        assert div['type'] == 'D2CSR' and div['backbone'] == key and div['upscale'] == 4
        # stage 2 and test must build the same network, or the checkpoints would not load
        assert network_opt(OPTIONS / f'train_D2C-{name}_conv_x4.yml') == div
        assert network_opt(OPTIONS / f'test_D2C-{name}_x4.yml') == div
        assert network_opt(OPTIONS / f'train_{name}_x4.yml') == network_opt(OPTIONS / f'test_{name}_x4.yml')
        names = {f: yaml.safe_load((OPTIONS / f).read_text())['name']
                 for f in (f'train_D2C-{name}_div_x4.yml', f'train_D2C-{name}_conv_x4.yml', f'train_{name}_x4.yml')}
        assert len(set(names.values())) == 3, names  # no two runs write to the same experiments/<name>
        conv = yaml.safe_load((OPTIONS / f'train_D2C-{name}_conv_x4.yml').read_text())
        assert conv['path']['pretrain_network_g'] == f'experiments/D2C-{name}_div_x4/models/net_g_latest.pth'


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('name', list(BACKBONES))
def test_full_size_d2c_from_options_file(name, scale):
    """Built from its options file at x2/x3/x4: P = 4 leaves of the right shape, gradients everywhere,
    fewer parameters than the original network of its options file."""
    key, block = BACKBONES[name]
    torch.manual_seed(0)
    net = build_network(network_opt(OPTIONS / f'train_D2C-{name}_div_x4.yml', scale))
    assert isinstance(net, D2CSR) and net.num_branches == 4
    assert all(any(isinstance(m, block) for m in node.modules()) for node in net.nodes)

    x = torch.rand(1, 3, 8, 8)
    branches = net.forward_branches(x)
    assert len(branches) == 4
    assert all(b.shape == (1, 3, 8 * scale, 8 * scale) and torch.isfinite(b).all() for b in branches)
    assert not torch.equal(branches[0], branches[3])
    sr = net(x)
    assert sr.shape == (1, 3, 8 * scale, 8 * scale)
    (sum(b.square().mean() for b in branches) + sr.mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing

    with torch.device('meta'):  # the original's count needs no weights (EDSR has 43M)
        original = build_network(network_opt(OPTIONS / f'train_{name}_x4.yml', scale))
    assert count(net) < count(original)


def test_original_networks_run_from_their_options_files():
    """Small-feature versions of the originals' option files (same types and structure) give x4 outputs."""
    shrink = dict(num_feat=16, num_block=2, num_grow_ch=8, num_conv=4, num_layer=2)
    x = torch.rand(1, 3, 8, 8)
    for name in BACKBONES:
        opt = network_opt(OPTIONS / f'train_{name}_x4.yml')
        opt.update({k: v for k, v in shrink.items() if k in opt})
        net = build_network(opt)
        out = net(x)
        assert out.shape == (1, 3, 32, 32), name
        out.mean().backward()
        assert all(p.grad is not None for p in net.parameters()), name


def test_original_parameter_counts_match_their_papers():
    """Full-size originals: paper Table 3 figures where they are the standard models, else the
    network's own paper (IMDN: 694K / 703K / 715K at x2 / x3 / x4)."""
    with torch.device('meta'):
        counts = {name: count(build_network(network_opt(OPTIONS / f'train_{name}_x4.yml')))
                  for name in ('EDSR', 'SRResNet', 'RRDBNet', 'VDSR')}
        imdn = [count(IMDN(upscale=s)) for s in (2, 3, 4)]
        rdn_full = count(RDN(num_block=16, num_layer=8, num_grow_ch=64))
    paper = {'EDSR': 43.1e6, 'SRResNet': 1.52e6, 'RRDBNet': 16.7e6, 'VDSR': 0.67e6}
    for name, figure in paper.items():
        assert abs(counts[name] - figure) / figure < 0.005, (name, counts[name])
    assert [round(c / 1e3) for c in imdn] == [694, 703, 715]
    assert round(rdn_full / 1e5) == 223  # RDN paper's full model (D=16, C=8, G=64): 22.3M at x4


def test_rdn_block_is_densely_connected_with_local_residual():
    block = ResidualDenseBlock(num_feat=8, num_grow_ch=4, num_layer=3)
    assert [layer[0].in_channels for layer in block.layers] == [8, 12, 16]
    assert block.lff.in_channels == 8 + 3 * 4 and block.lff.kernel_size == (1, 1)
    x = torch.rand(2, 8, 5, 5)
    with torch.no_grad():
        block.lff.weight.zero_()
        block.lff.bias.zero_()
    torch.testing.assert_close(block(x), x)  # only the local residual is left
    trunk = RDNTrunk(8, num_block=3, num_grow_ch=4, num_layer=2)
    assert trunk.gff[0].in_channels == 3 * 8  # global feature fusion sees every block's output
    assert trunk(x).shape == x.shape


def test_imdb_distills_a_quarter_and_keeps_the_rest():
    block = IMDB(num_feat=32, distill_rate=0.25)
    assert (block.distilled, block.remaining) == (8, 24)
    assert [block.c2.in_channels, block.c3.in_channels, block.c4.in_channels, block.c4.out_channels] == [24, 24, 24, 8]
    assert block.c5.in_channels == 32
    x = torch.rand(2, 32, 6, 6)
    with torch.no_grad():
        block.c5.weight.zero_()
        block.c5.bias.zero_()
    torch.testing.assert_close(block(x), x)
    # constant feature maps (zero contrast) keep finite gradients
    y = torch.ones(1, 32, 4, 4, requires_grad=True)
    IMDB(32)(y).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_vdsr_predicts_a_residual_on_the_bicubic_input():
    x = torch.rand(1, 3, 6, 5)
    bicubic = torch.nn.functional.interpolate(x, scale_factor=3, mode='bicubic', align_corners=False)
    net = VDSR(num_feat=8, num_conv=5, upscale=3)
    assert len([m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]) == 5
    with torch.no_grad():
        net.conv_last.weight.zero_()
        net.conv_last.bias.zero_()
    torch.testing.assert_close(net(x), bicubic)
    # D2C-VDSR: with the tails zeroed every leaf is the bicubic image (input upsampled first, global residual)
    d2c = build_network(dict(network_opt(OPTIONS / 'train_D2C-VDSR_div_x4.yml', 3), num_feat=8))
    assert d2c.head(x).shape[-2:] == (18, 15)
    with torch.no_grad():
        for tail in d2c.tails:
            tail[0].weight.zero_()
            tail[0].bias.zero_()
    for leaf in d2c.forward_branches(x):
        torch.testing.assert_close(leaf, bicubic)


def test_upsamplers_build_the_tails_they_name():
    common = dict(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=4)
    default = D2CSR(**common)
    explicit = D2CSR(upsampler='pixelshuffle', **common)
    assert list(default.state_dict()) == list(explicit.state_dict())  # default keeps the layout
    direct = D2CSR(upsampler='pixelshuffledirect', **common)
    assert direct.tails[0][0].out_channels == 3 * 16 and isinstance(direct.tails[0][1], torch.nn.PixelShuffle)
    assert count(direct.tails) < count(default.tails)
    assert direct(torch.rand(1, 3, 4, 4)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize('kwargs,words', [
    (dict(backbone='resnet'), ['resnet', 'edsr', 'imdn', 'rcan', 'rdn', 'rrdbnet', 'srresnet', 'vdsr']),
    (dict(backbone='edsr', backbone_opt={'num_group': 2}), ['num_group', 'edsr', 'num_block', 'res_scale']),
    (dict(backbone='rdn', backbone_opt={'growth': 16}), ['growth', 'num_layer', 'num_grow_ch']),
    (dict(backbone='vdsr', backbone_opt={'num_block': 3}), ['num_block', 'num_conv']),
    (dict(backbone='rcan', backbone_opt={'num_conv': 3}), ['num_conv', 'num_group', 'squeeze_factor']),
    (dict(backbone='srresnet', backbone_opt={'num_block': 0}), ['num_block', '>= 1']),
    (dict(backbone='rrdbnet', backbone_opt={'num_grow_ch': 2.5}), ['num_grow_ch']),
    (dict(backbone='imdn', num_feat=10), ['imdn', 'distill_rate']),
    (dict(backbone='imdn', backbone_opt=[2]), ['backbone_opt', 'mapping']),
    (dict(upsampler='nearest'), ['upsampler', 'pixelshuffle', 'pixelshuffledirect', 'bicubic_input']),
])
def test_wrong_backbone_options_raise_clear_errors(kwargs, words):
    with pytest.raises(ValueError) as err:
        D2CSR(**dict(dict(num_feat=16, upscale=2), **kwargs))
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_branch_module_options_list_the_defaults():
    assert branch_module_options('rdn') == {'num_block': 4, 'num_layer': 6, 'num_grow_ch': 32}
    assert branch_module_options('imdn') == {'num_block': 2, 'distill_rate': 0.25}
    node = build_branch_module('rdn', 16, num_block=3)
    assert len(node.blocks) == 3 and len(node.blocks[0].layers) == 6


def test_two_stage_training_with_the_vdsr_backbone(photo_data, tmp_path):
    """Both stages through d2csr/train.py with a non-default backbone (VDSR: bicubic input, global residual)."""
    network = dict(type='D2CSR', num_feat=16, upscale=4, depth=2, width=2, mean_shift='none', backbone='vdsr',
                   backbone_opt={'num_conv': 2}, upsampler='bicubic_input', bicubic_skip=True, fusion_feat=16)
    div, conv = unique_name('vdsr_div'), unique_name('vdsr_conv')
    run_entry('train', '-opt', write_options(tiny_options(photo_data, div, total_iter=2, network=network),
                                              tmp_path / 'div.yml'))
    div_ckpt = experiment_dir(div) / 'models' / 'net_g_latest.pth'
    stage1 = torch.load(div_ckpt, map_location='cpu', weights_only=True)['params']
    assert 'nodes.5.2.weight' in stage1 and 'tails.3.0.weight' in stage1  # VDSR conv stacks, conv-only tails
    conv_opt = tiny_options(photo_data, conv, stage='convergence', total_iter=2, pretrain=str(div_ckpt),
                            network=network)
    run_entry('train', '-opt', write_options(conv_opt, tmp_path / 'conv.yml'))
    stage2 = torch.load(experiment_dir(conv) / 'models' / 'net_g_latest.pth', map_location='cpu',
                        weights_only=True)['params']
    tree = [k for k in stage1 if not k.startswith('fusion.')]
    assert tree and all(torch.equal(stage1[k], stage2[k]) for k in tree)  # tree frozen
    assert any(not torch.equal(stage1[k], stage2[k]) for k in stage1 if k.startswith('fusion.'))
    log = next(experiment_dir(conv).glob('train_*.log')).read_text()
    fusion_params = (12 * 16 + 16 * 16 + 16 * 4) * 9
    assert f'D2C stage "convergence": optimizing {fusion_params:,} parameters' in log


def test_original_network_trains_from_its_shipped_options_file(photo_data, tmp_path):
    """options/train_IMDN_x4.yml (BasicSR's SRModel, L2 loss) trains through d2csr/train.py; only the data,
    device, size and length are changed."""
    opt = yaml.safe_load((OPTIONS / 'train_IMDN_x4.yml').read_text())
    tiny = tiny_options(photo_data, unique_name('imdn'), total_iter=2)
    opt.update(name=tiny['name'], num_gpu=0, datasets=tiny['datasets'], logger=tiny['logger'])
    opt['network_g'].update(num_feat=16, num_block=2)
    opt['train'].update(total_iter=2)
    opt['val']['val_freq'] = 2
    run_entry('train', '-opt', write_options(opt, tmp_path / 'imdn.yml'))
    params = torch.load(experiment_dir(opt['name']) / 'models' / 'net_g_latest.pth', map_location='cpu',
                        weights_only=True)['params']
    assert 'trunk.blocks.1.cca.attention.0.weight' in params
    log = next(experiment_dir(opt['name']).glob('train_*.log')).read_text()
    assert 'l_pix' in log and '# psnr:' in log
