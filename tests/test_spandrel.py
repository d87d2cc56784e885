"""D2C-SR in spandrel (ComfyUI, chaiNNer): detection from the weights alone, every option inferred, the same output
as d2csr's forward, and no false detection of spandrel's own architectures."""
import importlib

import pytest
import torch

from conftest import OFFICIAL_FIXTURE, load_script
from tiny_d2c import TINY_BACKBONE_OPT, tiny_d2c
from d2csr.archs.infer_options import infer_network_options
from d2csr.loading import load_model

spandrel = pytest.importorskip('spandrel', reason='spandrel is an optional extra: pip install "d2csr[spandrel]"')
from d2csr.integrations import spandrel as d2c_spandrel  # noqa: E402

@pytest.fixture(scope='module', autouse=True)
def installed():
    """D2C-SR in spandrel's MAIN_REGISTRY, as a ComfyUI node or chaiNNer plugin would install it."""
    d2c_spandrel.install(ignore_duplicates=True)
    return spandrel.MAIN_REGISTRY


def tiny(backbone='rcan', **kwargs):
    return tiny_d2c(backbone, **kwargs)


def check_same_output(descriptor, net, size=(11, 9)):
    x = torch.rand(1, net.head.in_channels, *size)
    with torch.no_grad():
        ref = net(x)
        raw = descriptor.model(x)  # the network spandrel built
    assert (raw - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))  # (random nets may leave [0, 1])
    assert (descriptor(x) - ref.clamp(0, 1)).abs().max() <= 1e-5  # spandrel's call (it clamps to [0, 1])


VARIANTS = [  # (backbone, D2CSR options): every backbone x traced upsampler, and every traced option
    *[(b, dict(upsampler='pixelshuffle', upscale=4)) for b in TINY_BACKBONE_OPT],
    *[(b, dict(upsampler='pixelshuffledirect', upscale=3)) for b in TINY_BACKBONE_OPT],
    ('rcan', dict(upscale=2, depth=1, width=3, mean_shift='learnable')),
    ('rcan', dict(upscale=8, depth=3, width=1, deep_residual=False, fusion_feat=4)),
    ('edsr', dict(upscale=3, depth=2, width=3, num_in_ch=1, num_out_ch=1, mean_shift='none')),
    ('imdn', dict(upscale=2, num_feat=16, backbone_opt=dict(num_block=1, distill_rate=0.25))),
]


@pytest.mark.parametrize('backbone,kwargs', VARIANTS, ids=lambda v: v if isinstance(v, str) else
                         '-'.join(f'{k}={val}' for k, val in v.items() if k != 'backbone_opt'))
def test_spandrel_loads_every_traced_variant_from_the_weights_alone(backbone, kwargs, tmp_path):
    net, opts = tiny(backbone, **kwargs)
    path = tmp_path / 'net_g_latest.pth'
    torch.save({'params': net.state_dict()}, path)  # what BasicSR saves
    model = spandrel.ModelLoader().load_from_file(path)
    assert model.architecture.id == 'D2CSR' and model.purpose == 'SR'
    assert model.scale == opts['upscale']
    assert model.input_channels == model.output_channels == opts.get('num_in_ch', 3)
    assert model.supports_half and model.supports_bfloat16  # see test_half_and_bfloat16_claims_hold
    assert model.size_requirements.none and model.tiling == spandrel.ModelTiling.SUPPORTED
    # every structural option is read back ('fixed' and 'none' mean shifts store the same tensors: RGB networks
    # get the default 'fixed', others 'none')
    inferred = infer_network_options(model.model.state_dict())
    expected = dict(opts, mean_shift=opts.get('mean_shift', 'fixed'))
    assert {k: inferred.get(k) for k in expected} == expected
    check_same_output(model, net)


def test_ema_checkpoints_module_prefixes_and_d2csr_agree(tmp_path):
    """BasicSR with EMA saves params and params_ema: spandrel and d2csr both take the EMA weights."""
    net, _ = tiny()
    ema, _ = tiny()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.05)
    path = tmp_path / 'net_g_ema.pth'
    torch.save({'params': net.state_dict(), 'params_ema': ema.state_dict()}, path)
    model = spandrel.ModelLoader().load_from_file(path)
    ours, _ = load_model(str(path))
    assert ours.param_key == 'params_ema'
    check_same_output(model, ours)
    check_same_output(model, ema)
    # a DataParallel-style bare state dict ('module.' names)
    bare = tmp_path / 'bare.pth'
    torch.save({f'module.{k}': v for k, v in net.state_dict().items()}, bare)
    check_same_output(spandrel.ModelLoader().load_from_file(bare), net)


def test_converted_authors_weights_load_in_spandrel_as_in_d2csr(tmp_path):
    """scripts/convert_official.py's output (what a user puts in ComfyUI/models/upscale_models) loads as D2C-SR
    and super-resolves exactly as d2csr's loader does."""
    pth = tmp_path / 'D2C_official_x4.pth'
    assert load_script('scripts/convert_official.py').main([str(OFFICIAL_FIXTURE / 'checkpoint.pkl'), str(pth)]) == 0
    model = spandrel.ModelLoader().load_from_file(pth)
    ours, opts = load_model(str(pth))
    assert model.architecture.id == 'D2CSR' and model.scale == 4 and 'learnable-mean' in model.tags
    assert infer_network_options(model.model.state_dict()) == opts
    check_same_output(model, ours, size=(13, 10))


def test_bicubic_input_networks_are_refused_with_the_reason(tmp_path):
    net, _ = tiny('vdsr', upsampler='bicubic_input', upscale=4, bicubic_skip=True, mean_shift='none')
    path = tmp_path / 'd2c_vdsr.pth'
    torch.save({'params': net.state_dict()}, path)
    with pytest.raises(ValueError, match=r'bicubic_input.*scale, bicubic_skip and mean_shift leave no trace'):
        spandrel.ModelLoader().load_from_file(path)


def test_damaged_weights_are_refused_with_the_reason(tmp_path):
    net, _ = tiny()
    state = net.state_dict()
    state['nodes.0.0.conv.weight'] = torch.full_like(state['nodes.0.0.conv.weight'], float('nan'))
    with pytest.raises(ValueError, match=r'nodes\.0\.0\.conv\.weight.*(NaN|nan)'):
        spandrel.ModelLoader().load_from_state_dict(state)
    state = net.state_dict()
    state['tails.1.1.weight'] = state['tails.1.1.weight'][:, :4]  # a tail that does not fit the others
    with pytest.raises(ValueError, match=r'do not fit the inferred network'):
        spandrel.ModelLoader().load_from_state_dict(state)


def test_half_and_bfloat16_claims_hold():
    """supports_half / supports_bfloat16: every backbone runs in fp16 and bf16 weights (spandrel's .half() /
    .bfloat16()) with finite outputs close to fp32 (the full-size figures: benchmarks/spandrel_dtypes.py)."""
    x = torch.rand(1, 3, 12, 10)
    for backbone in TINY_BACKBONE_OPT:
        net, _ = tiny(backbone, upscale=2)
        model = spandrel.ModelLoader().load_from_state_dict(net.state_dict())
        with torch.no_grad():
            ref = net(x).clamp(0, 1)
        for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
            out = model.to(dtype)(x.to(dtype)).float()
            assert torch.isfinite(out).all() and (out - ref).abs().max() <= tol, (backbone, dtype)
            model.float()


def test_install_into_a_registry_passed_in(tmp_path):
    registry = spandrel.ArchRegistry()
    assert d2c_spandrel.install(registry)[0].architecture.id == 'D2CSR'
    with pytest.raises(spandrel.DuplicateArchitectureError):
        d2c_spandrel.install(registry)
    assert d2c_spandrel.install(registry, ignore_duplicates=True) == []
    net, _ = tiny()
    assert spandrel.ModelLoader(registry=registry).load_from_state_dict(net.state_dict()).architecture.id == 'D2CSR'
    # without install, spandrel's own registry has nothing that takes a D2C checkpoint
    with pytest.raises(spandrel.UnsupportedModelError):
        spandrel.ModelLoader(registry=spandrel.ArchRegistry()).load_from_state_dict(net.state_dict())


# --- no false detection: spandrel's own architectures still load as themselves after install() ---------------------
def _arch(name, cls=None):
    return getattr(importlib.import_module(f'spandrel.architectures.{name}'), cls or name)


# every SR architecture of spandrel 0.4 (small configurations that its detectors recognise), then a few others
BUILTINS = {
    'ESRGAN': lambda: _arch('ESRGAN')(num_filters=16, num_blocks=2, scale=4),
    'RCAN': lambda: _arch('RCAN')(n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4, scale=4),
    'SwinIR': lambda: _arch('SwinIR')(img_size=16, window_size=8, embed_dim=12, depths=[2], num_heads=[2], upscale=2,
                                      upsampler='pixelshuffle'),
    'HAT': lambda: _arch('HAT')(img_size=16, window_size=8, embed_dim=12, depths=(2, ), num_heads=(2, ),
                                squeeze_factor=3, upscale=2, upsampler='pixelshuffle'),
    'SPAN': lambda: _arch('SPAN')(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=4),
    'OmniSR': lambda: _arch('OmniSR')(num_feat=16, up_scale=4),
    'Compact': lambda: _arch('Compact')(num_feat=16, num_conv=4),
    'SwiftSRGAN': lambda: _arch('SwiftSRGAN')(num_channels=16, num_blocks=2),
    'RealCUGAN': lambda: _arch('RealCUGAN', 'UpCunet2x')(),
    'DITN': lambda: _arch('DITN')(dim=12, ITL_blocks=1, SAL_blocks=1),
    'DCTLSA': lambda: _arch('DCTLSA')(nf=20, num_modules=2, num_head=4),
    'CRAFT': lambda: _arch('CRAFT')(embed_dim=24, depths=[2], num_heads=[2]),
    'SeemoRe': lambda: _arch('SeemoRe')(num_layers=2, embedding_dim=16, num_experts=2),
    'MoSR': lambda: _arch('MoSR')(n_block=2, dim=16),
    'PLKSR': lambda: _arch('PLKSR')(dim=16, n_blocks=2),
    'FDAT': lambda: _arch('FDAT')(embed_dim=32, num_groups=1, depth_per_group=2, num_heads=2),
    'DAT': lambda: _arch('DAT')(embed_dim=24, depth=[2], num_heads=[2], upscale=2),
    'RGT': lambda: _arch('RGT')(embed_dim=24, depth=[2], num_heads=[2], upscale=2),
    'GRL': lambda: _arch('GRL')(embed_dim=16, depths=[2], num_heads_window=[2], num_heads_stripe=[2], upscale=2,
                                upsampler='pixelshuffle'),
    'ATD': lambda: _arch('ATD')(embed_dim=24, depths=(2, ), num_heads=(2, ), upscale=2, upsampler='pixelshuffle'),
    'DRCT': lambda: _arch('DRCT')(embed_dim=24, depths=(2, ), num_heads=(2, ), upscale=2, upsampler='pixelshuffle'),
    'Swin2SR': lambda: _arch('Swin2SR')(img_size=16, window_size=8, embed_dim=12, depths=[2], num_heads=[2], upscale=2,
                                        upsampler='pixelshuffle'),
    'SAFMN': lambda: _arch('SAFMN')(dim=16, n_blocks=2),
    'MoESR': lambda: _arch('MoESR')(dim=16, n_blocks=2, n_block=1),
    'MMRealSR': lambda: _arch('MMRealSR')(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=2,
                                          num_feats=[16, 32, 64, 128], num_blocks=[1, 1, 1, 1]),
    'IPT': lambda: _arch('IPT')(n_feats=16, num_heads=2, num_layers=1, scale=[2], patch_size=48),
    'AuraSR': lambda: _arch('AuraSR')(dim=8, image_size=64, input_image_size=16,
                                      style_network=dict(dim_in=8, dim_out=8, depth=1)),
    # restoration models (scale 1)
    'DnCNN': lambda: _arch('DnCNN')(),
    'SCUNet': lambda: _arch('SCUNet')(dim=16, config=[1] * 7),
    'NAFNet': lambda: _arch('NAFNet')(width=16, enc_blk_nums=[1], dec_blk_nums=[1]),
    'RetinexFormer': lambda: _arch('RetinexFormer')(n_feat=16),
    'SAFMNBCIE': lambda: _arch('SAFMNBCIE')(dim=16, n_blocks=2, num_layers=2),
    'FFTformer': lambda: _arch('FFTformer')(dim=16, num_blocks=[1, 1, 1], num_refinement_blocks=1),
    'Uformer': lambda: _arch('Uformer')(embed_dim=8, depths=[1] * 9),
    'MixDehazeNet': lambda: _arch('MixDehazeNet')(),
    'HVICIDNet': lambda: _arch('HVICIDNet')(),
}


def test_every_builtin_sr_architecture_still_loads_as_itself(installed, tmp_path):
    assert installed.architectures('detection')[0].architecture.id == 'D2CSR'  # D2C-SR is asked first
    sr_ids = {s.architecture.id for s in installed if s.architecture.id not in (
        'D2CSR', 'GFPGAN', 'RestoreFormer', 'LaMa', 'SCUNet', 'FBCNN', 'Uformer', 'KBNet', 'FFTformer', 'NAFNet',
        'MixDehazeNet', 'DRUNet', 'DnCNN', 'RetinexFormer', 'HVICIDNet', 'SAFMNBCIE')}
    missing = sorted(sr_ids - set(BUILTINS))
    assert not missing, f'spandrel SR architectures not checked for false detection: {missing}'
    torch.manual_seed(0)
    for arch_id, build in BUILTINS.items():
        state = build().state_dict()
        assert not d2c_spandrel.detect(state), arch_id
        path = tmp_path / f'{arch_id}.pth'
        torch.save(state, path)
        assert spandrel.ModelLoader().load_from_file(path).architecture.id == arch_id
        path.unlink()


def test_precision_benchmark_runs(tmp_path, capsys):
    """benchmarks/spandrel_dtypes.py (the measurement behind supports_half / supports_bfloat16) on a tiny model."""
    net, _ = tiny('imdn', upscale=2)
    torch.save({'params': net.state_dict()}, tmp_path / 'tiny.pth')
    script = load_script('benchmarks/spandrel_dtypes.py')
    assert script.main(['--model', str(tmp_path / 'tiny.pth'), '--size', '16']) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith('tiny.pth')]
    assert [r[1] for r in rows] == ['float32', 'float16', 'bfloat16']
    assert all(r[2] == 'True' and float(r[3]) <= 3e-2 for r in rows)
