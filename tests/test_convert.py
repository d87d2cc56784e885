"""The authors' MegEngine checkpoints in PyTorch: exactness, every scale, safety, bad input, test pipeline."""
import os
import pickle
import re

import numpy as np
import pytest
import torch
import yaml

from conftest import OFFICIAL_FIXTURE, ROOT, load_script, results_dir, run_entry, unique_name, write_options
from d2csr.archs import D2CSR
from d2csr.archs.infer_options import infer_network_options
from d2csr.convert import (UnsafeCheckpointError, d2csr_to_official, load_official, read_official_pickle,
                           save_basicsr_checkpoint)
from d2csr.loading import load_model
from d2csr.utils.checkpoint import CheckpointFormatError

CKPT = OFFICIAL_FIXTURE / 'checkpoint.pkl'



def tolerance(ref):
    return 1e-4 * (1 + float(np.abs(ref).max()))


def test_fixture_reproduces_the_authors_branches_and_fused_output():
    net = load_official(str(CKPT))
    assert not net.training
    opts = net.network_options
    assert (opts['upscale'], opts['num_feat'], opts['num_block'], opts['num_group']) == (4, 32, 2, 2)
    assert opts['mean_shift'] == 'learnable'
    x = torch.from_numpy(np.load(OFFICIAL_FIXTURE / 'input.npy'))
    ref_branches, ref_sr = np.load(OFFICIAL_FIXTURE / 'branches.npy'), np.load(OFFICIAL_FIXTURE / 'sr.npy')
    with torch.no_grad():
        branches, sr = net.forward_branches(x), net(x)
    assert len(branches) == len(ref_branches) == 4
    for ours, ref in zip(branches, ref_branches):
        assert np.abs(ours.numpy() - ref).max() <= tolerance(ref)
    assert np.abs(sr.numpy() - ref_sr).max() <= tolerance(ref_sr)


def test_export_has_exactly_the_official_names_and_shapes():
    """The inverse mapping of a same-sized D2CSR gives the fixture's key set, shapes included."""
    official = read_official_pickle(str(CKPT))
    exported = d2csr_to_official(D2CSR(num_feat=32, num_block=2, upscale=4, mean_shift='learnable'))
    for part in ('state_dict_D', 'state_dict_C'):
        assert {k: v.shape for k, v in exported[part].items()} == {k: v.shape for k, v in official[part].items()}


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_round_trip_through_the_official_format_for_every_scale(scale, tmp_path):
    torch.manual_seed(scale)
    net = D2CSR(num_feat=16, num_group=2, num_block=2, squeeze_factor=4, upscale=scale, mean_shift='learnable').eval()
    with torch.no_grad():
        for p in net.parameters():  # away from the initialisation, biases included
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / f'x{scale}.pkl'
    with open(path, 'wb') as f:
        pickle.dump(d2csr_to_official(net), f, protocol=4)
    loaded = load_official(str(path))
    opts = loaded.network_options
    assert (opts['upscale'], opts['num_feat'], opts['num_block'], opts['squeeze_factor']) == (scale, 16, 2, 4)
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {marker}', ))

    evil = tmp_path / 'evil.pkl'
    evil.write_bytes(pickle.dumps({'state_dict_D': Payload(), 'state_dict_C': {}}))
    with pytest.raises(UnsafeCheckpointError, match=r'refused to load.*system'):
        load_official(str(evil))
    assert not marker.exists()
    # an object array could carry arbitrary objects: refused as well
    obj = tmp_path / 'objects.pkl'
    obj.write_bytes(pickle.dumps({'state_dict_D': {'head.0.weight': np.array([1, 'a'], dtype=object)}}))
    with pytest.raises(UnsafeCheckpointError, match='object array'):
        load_official(str(obj))
    # the converter script reports it as an error and writes nothing
    with pytest.raises(SystemExit, match='refused to load'):
        load_script('scripts/convert_official.py').main([str(evil), str(tmp_path / 'out.pth')])
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()


def test_bad_checkpoints_name_the_problem(tmp_path):
    truncated = tmp_path / 'truncated.pkl'
    truncated.write_bytes(CKPT.read_bytes()[:100_000])
    with pytest.raises(CheckpointFormatError, match='truncated'):
        load_official(str(truncated))
    other = tmp_path / 'other.pkl'
    other.write_bytes(pickle.dumps({'state_dict_D': {'conv1.weight': np.zeros((4, 3, 3, 3), np.float32)},
                                    'state_dict_C': {}}))
    with pytest.raises(CheckpointFormatError, match=r"another architecture.*|lacks.*head\.0\.weight"):
        load_official(str(other))
    wrong_top = tmp_path / 'wrong_top.pkl'
    wrong_top.write_bytes(pickle.dumps({'model': {}}))
    with pytest.raises(CheckpointFormatError, match='state_dict_D'):
        load_official(str(wrong_top))
    with pytest.raises(ValueError, match=r'x4 model, but scale 2'):
        load_official(str(CKPT), scale=2)
    pth = tmp_path / 'net.pth'
    save_basicsr_checkpoint(load_official(str(CKPT)), pth)
    with pytest.raises(CheckpointFormatError, match='PyTorch checkpoint'):
        load_official(str(pth))
    # a BasicSR checkpoint of another network: inference cannot infer it and says what to do
    torch.save({'params': {'conv_first.weight': torch.zeros(4, 3, 3, 3)}}, tmp_path / 'esrgan.pth')
    with pytest.raises(CheckpointFormatError, match='-opt'):
        load_model(str(tmp_path / 'esrgan.pth'))


@pytest.mark.parametrize('kwargs', [dict(upscale=3, depth=3, width=2, deep_residual=False),
                                    dict(upscale=8, depth=1, width=3, mean_shift='learnable', fusion_feat=8)])
def test_network_options_are_inferred_from_basicsr_checkpoints(kwargs, tmp_path):
    opts = dict(num_feat=8, num_group=3, num_block=2, squeeze_factor=2, **kwargs)
    net = D2CSR(**opts)
    inferred = infer_network_options(net.state_dict())
    assert {k: inferred[k] for k in opts} == opts
    save_basicsr_checkpoint(net, tmp_path / 'net.pth')
    loaded, _ = load_model(str(tmp_path / 'net.pth'))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))


def test_converter_and_official_test_options_give_the_same_metric(photo_data, tmp_path, capsys):
    """convert_official.py -> options/test_D2C_official_x4.yml (with the printed network_g) -> d2csr/test.py
    reports the PSNR of the converted network computed here directly; its panels are written too."""
    from basicsr.metrics import calculate_psnr
    from basicsr.utils import tensor2img
    from d2csr.utils.image_io import image_to_tensor, read_image

    pth = tmp_path / 'official_x4.pth'
    assert load_script('scripts/convert_official.py').main([str(CKPT), str(pth)]) == 0
    stdout = capsys.readouterr().out
    network_g = yaml.safe_load(stdout[stdout.index('\nnetwork_g:'):])['network_g']
    assert network_g['num_feat'] == 32 and network_g['upscale'] == 4
    params = torch.load(pth, map_location='cpu', weights_only=True)['params']
    ref_net = load_official(str(CKPT))
    assert all(torch.equal(params[k], v) for k, v in ref_net.state_dict().items())

    name = unique_name('official')
    opt = yaml.safe_load((ROOT / 'options' / 'test_D2C_official_x4.yml').read_text())
    assert opt['val']['save_panels'] is True
    opt.update(name=name, num_gpu=0, network_g=network_g)
    opt['path']['pretrain_network_g'] = str(pth)
    val = photo_data / 'val'
    opt['datasets']['test_1'].update(name='photos_val', dataroot_gt=str(val / 'HR'), dataroot_lq=str(val / 'LR'))
    run_entry('test', '-opt', write_options(opt, tmp_path / 'test.yml'))
    log = next(results_dir(name).glob('test_*.log')).read_text()
    reported = float(re.search(r'# psnr: ([0-9.]+)', log).group(1))

    lq = image_to_tensor(read_image(str(next((val / 'LR').glob('*.png')))))
    gt = image_to_tensor(read_image(str(next((val / 'HR').glob('*.png')))))
    with torch.no_grad():
        sr = ref_net(lq)
    expected = calculate_psnr(tensor2img([sr]), tensor2img([gt]), 4, test_y_channel=True)
    assert reported == pytest.approx(expected, abs=1e-3)
    # val: save_panels: one panel per image and the PSNR table
    panels = results_dir(name) / 'visualization' / 'panels' / 'photos_val'
    assert [p.name for p in panels.glob('*.png')] == ['chelsea_panel.png']
    table = (panels / 'psnr_table.csv').read_text().splitlines()
    assert table[0] == 'image,bicubic,branch1,branch2,branch3,branch4,mean,fused,oracle'
    assert float(table[1].split(',')[7]) == pytest.approx(expected, abs=1e-3)
