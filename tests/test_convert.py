"""The authors' MegEngine checkpoints in PyTorch: exactness, every scale, colour order, safety, bad input, test
pipeline."""
import os
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


# ------------------------------------------------------------------------------------------------------
# the authors' forward, written here from their description (REFERENCE.md section 2) with torch.nn.functional
# on their own state dicts: independent of d2csr's network, its name mapping and its colour swap
def authors_forward(payload, x):
    """``(branches 11, 12, 21, 22; fused)`` of the authors' D_Net + C_Net on ``x`` (in the order their code
    reads images: BGR). ``payload``: their pickle's ``{'state_dict_D', 'state_dict_C'}``."""
    sd = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in payload['state_dict_D'].items()}
    sc = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in payload['state_dict_C'].items()}

    def conv(name, y, bias=True):
        w = sd[f'{name}.weight'] if name in {k.rsplit('.', 1)[0] for k in sd} else sc[f'{name}.weight']
        b = sd[f'{name}.bias'].reshape(-1) if bias else None
        return F.conv2d(y, w, b, padding=w.shape[-1] // 2)

    def group_count(prefix):
        return len({int(k.split('.')[1]) for k in sd if k.startswith(prefix + '.') and k.count('.') > 2})

    def node(name, y):  # [RG x G, conv]; RG = [RCAB x B, conv] + skip; RCAB = [conv, ReLU, conv, CA] + skip
        groups = group_count(name)
        for g in range(groups):
            blocks = len({int(k.split('.')[3]) for k in sd if k.startswith(f'{name}.{g}.body.')
                          and '.body.' in k[len(f'{name}.{g}.body.'):]})
            r = y
            for b in range(blocks):
                p = f'{name}.{g}.body.{b}.body'
                t = conv(f'{p}.2', F.relu(conv(f'{p}.0', r)))
                pooled = t.mean((2, 3), keepdim=True)
                a = torch.sigmoid(conv(f'{p}.3.conv_du.2', F.relu(conv(f'{p}.3.conv_du.0', pooled))))
                r = r + t * a
            y = y + conv(f'{name}.{g}.body.{blocks}', r)
        return conv(f'{name}.{groups}', y)

    def tail(name, y):
        ups = sorted({int(k.split('.')[2]) for k in sd if k.startswith(f'{name}.0.')})
        for i in ups:
            w = sd[f'{name}.0.{i}.weight']
            y = F.pixel_shuffle(conv(f'{name}.0.{i}', y), int(round((w.shape[0] / w.shape[1])**0.5)))
        return conv(f'{name}.1', y)

    h = conv('head.0', conv('sub_mean', x))
    r = {'1': node('body1', h), '2': node('body2', h)}
    outs = []
    for n, leaf in enumerate(('11', '12', '21', '22')):
        y = node(f'body{leaf}', r[leaf[0]])
        y = conv(f'res_conv{2 * n + 1}', y) + r[leaf[0]]
        y = conv(f'res_conv{2 * n + 2}', y) + h
        outs.append(conv('add_mean', tail(f'tail{leaf}', y)))
    m = torch.cat(outs, 1)
    for i in range(3):
        m = F.relu(conv(f'fusion_final.{i}.conv', m, bias=False))
    weights = torch.softmax(m, 1)
    return outs, sum(o * weights[:, i:i + 1] for i, o in enumerate(outs))


def bgr_to_rgb_and_back(net, x):
    """``ours(x[:, ::-1])[:, ::-1]``: the converted (RGB) network on the BGR input ``x``, its outputs back in BGR."""
    with torch.no_grad():
        rgb = x.flip(1)
        return [b.flip(1) for b in net.forward_branches(rgb)], net(rgb).flip(1)


def test_the_forward_written_here_is_the_authors():
    """Check of the reference itself: on the fixture it gives the MegEngine outputs."""
    payload = read_official_pickle(str(CKPT))
    x = torch.from_numpy(np.load(OFFICIAL_FIXTURE / 'input.npy'))
    with torch.no_grad():
        branches, sr = authors_forward(payload, x)
    for ours, ref in zip(branches, np.load(OFFICIAL_FIXTURE / 'branches.npy')):
        assert np.abs(ours.numpy() - ref).max() <= tolerance(ref)
    ref_sr = np.load(OFFICIAL_FIXTURE / 'sr.npy')
    assert np.abs(sr.numpy() - ref_sr).max() <= tolerance(ref_sr)


def test_fixture_rgb_in_rgb_out_equals_the_authors_bgr_output():
    """The authors' outputs (MegEngine, on the BGR ``input.npy``): the converted network reproduces them on the
    same image in RGB, outputs in RGB (``ours(x[:, ::-1])[:, ::-1] == theirs(x)``)."""
    net = load_official(str(CKPT))
    assert not net.training
    opts = net.network_options
    assert (opts['upscale'], opts['num_feat'], opts['num_block'], opts['num_group']) == (4, 32, 2, 2)
    assert opts['mean_shift'] == 'learnable'
    x = torch.from_numpy(np.load(OFFICIAL_FIXTURE / 'input.npy'))
    ref_branches, ref_sr = np.load(OFFICIAL_FIXTURE / 'branches.npy'), np.load(OFFICIAL_FIXTURE / 'sr.npy')
    branches, sr = bgr_to_rgb_and_back(net, x)
    assert len(branches) == len(ref_branches) == 4
    for ours, ref in zip(branches, ref_branches):
        assert np.abs(ours.numpy() - ref).max() <= tolerance(ref)
    assert np.abs(sr.numpy() - ref_sr).max() <= tolerance(ref_sr)
    # fed BGR as the authors' weights were (what the converter did before it swapped the colours), it is wrong
    with torch.no_grad():
        assert np.abs(net(x).numpy() - ref_sr).max() > 100 * tolerance(ref_sr)


def test_export_has_exactly_the_official_names_and_shapes():
    """The inverse mapping of a same-sized D2CSR gives the fixture's key set, shapes included."""
    official = read_official_pickle(str(CKPT))
    exported = d2csr_to_official(D2CSR(num_feat=32, num_block=2, upscale=4, mean_shift='learnable'))
    for part in ('state_dict_D', 'state_dict_C'):
        assert {k: v.shape for k, v in exported[part].items()} == {k: v.shape for k, v in official[part].items()}


def perturbed_net(scale):
    torch.manual_seed(scale)
    net = D2CSR(num_feat=16, num_group=2, num_block=2, squeeze_factor=4, upscale=scale, mean_shift='learnable').eval()
    with torch.no_grad():
        for p in net.parameters():  # away from the initialisation, biases included
            p.add_(0.02 * torch.randn_like(p))
        net.sub_mean.weight.add_(0.3 * torch.randn_like(net.sub_mean.weight))  # colours mixed as in theirs
        net.add_mean.weight.add_(0.3 * torch.randn_like(net.add_mean.weight))
    return net


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_round_trip_through_the_official_format_for_every_scale(scale, tmp_path):
    net = perturbed_net(scale)
    payload = d2csr_to_official(net)
    path = tmp_path / f'x{scale}.pkl'
    with open(path, 'wb') as f:
        pickle.dump(payload, f, protocol=4)
    loaded = load_official(str(path))
    opts = loaded.network_options
    assert (opts['upscale'], opts['num_feat'], opts['num_block'], opts['squeeze_factor']) == (scale, 16, 2, 4)
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
        # the exported pickle, run as the authors' code runs it (BGR), gives the RGB network's output
        branches, sr = authors_forward(payload, x)
    ours_branches, ours_sr = bgr_to_rgb_and_back(loaded, x)
    torch.testing.assert_close(ours_sr, sr, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(ours_branches, branches):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # not symmetric in the colours: the swap matters for these weights
    assert (sr - authors_forward(payload, x.flip(1))[1].flip(1)).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------------
# checkpoints an older converter wrote: the authors' BGR weights, no channel record
def old_converter_output(path):
    """What scripts/convert_official.py wrote before it swapped the colours: ``{'params'}`` only, the authors'
    BGR weights under d2csr's names, contiguous tensors."""
    from d2csr.convert import swap_red_blue

    state = swap_red_blue(load_official(str(CKPT)).state_dict())
    torch.save({'params': {k: v.detach().contiguous() for k, v in state.items()}}, path)
    return path


def test_old_conversions_are_refused_with_the_command_that_converts_them_again(tmp_path, capsys):
    old = old_converter_output(tmp_path / 'D2C_official_x4.pth')
    with pytest.raises(CheckpointFormatError) as info:
        load_model(str(old))
    message = str(info.value)
    assert 'older scripts/convert_official.py' in message and 'BGR' in message
    new = tmp_path / 'D2C_official_x4_rgb.pth'
    assert f'python scripts/convert_official.py {old} {new}' in message
    # the command in the message works: the old file in, the RGB checkpoint out, equal to a fresh conversion
    assert load_script('scripts/convert_official.py').main([str(old), str(new)]) == 0
    assert 'from an older conversion (BGR)' in capsys.readouterr().out
    ckpt = torch.load(new, map_location='cpu', weights_only=True)
    assert ckpt['d2csr']['channel_order'] == 'RGB'
    fresh = load_official(str(CKPT)).state_dict()
    assert ckpt['params'].keys() == fresh.keys()
    assert all(torch.equal(ckpt['params'][k], v) for k, v in fresh.items())
    net, _ = load_model(str(new))
    branches, sr = bgr_to_rgb_and_back(net, torch.from_numpy(np.load(OFFICIAL_FIXTURE / 'input.npy')))
    ref_sr = np.load(OFFICIAL_FIXTURE / 'sr.npy')
    assert np.abs(sr.numpy() - ref_sr).max() <= tolerance(ref_sr)
    # converting the new file again is refused: it is RGB already
    with pytest.raises(SystemExit, match='already converted'):
        load_script('scripts/convert_official.py').main([str(new), str(tmp_path / 'again.pth')])
    assert not (tmp_path / 'again.pth').exists()


def test_d2csr_own_checkpoints_without_a_record_still_load(tmp_path):
    """Only the old converter's output is refused: not a learnable-mean-shift network saved by an older
    save_basicsr_checkpoint (a diagonal sub_mean), nor the authors' weights fine-tuned and saved by training
    (channels-last tensors, as D2CModel saves them)."""
    own = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, mean_shift='learnable').eval()
    with torch.no_grad():
        own.sub_mean.weight.add_(0.01 * torch.randn_like(own.sub_mean.weight))  # trained a little
    torch.save({'params': {k: v.contiguous() for k, v in own.state_dict().items()}}, tmp_path / 'own.pth')
    loaded, _ = load_model(str(tmp_path / 'own.pth'))
    assert torch.equal(loaded.sub_mean.weight, own.sub_mean.weight)
    tuned = load_official(str(CKPT))  # what stage 2 on the converted weights saves: BasicSR's layout, no record
    torch.save({'params': {k: v.detach().cpu() for k, v in tuned.state_dict().items()}}, tmp_path / 'tuned.pth')
    assert not torch.load(tmp_path / 'tuned.pth', weights_only=True)['params']['head.weight'].is_contiguous()
    load_model(str(tmp_path / 'tuned.pth'))


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
    assert 'channel order: RGB' in stdout
    ckpt = torch.load(pth, map_location='cpu', weights_only=True)
    assert ckpt['d2csr'] == {'channel_order': 'RGB', 'source': ckpt['d2csr']['source'], 'record_version': 1}
    params = ckpt['params']
    ref_net = load_official(str(CKPT))
    assert all(torch.equal(params[k], v) for k, v in ref_net.state_dict().items())

    name = unique_name('official')
    opt = yaml.safe_load((ROOT / 'options' / 'test_D2C_official_x4.yml').read_text())
    assert opt['val']['save_panels'] is True
    opt.update(name=name, num_gpu=0, network_g=network_g)
    opt['path']['pretrain_network_g'] = str(pth)
    val = photo_data / 'val'
    opt['datasets']['test_1'] = dict(name='photos_val', type='PairedImageDataset', dataroot_gt=str(val / 'HR'),
                                     dataroot_lq=str(val / 'LR'), io_backend={'type': 'disk'})
    run_entry('test', '-opt', write_options(opt, tmp_path / 'test.yml'))
    log = next(results_dir(name).glob('test_*.log')).read_text()
    reported = float(re.search(r'# psnr: ([0-9.]+)', log).group(1))

    lq = image_to_tensor(read_image(str(next((val / 'LR').glob('*.png')))))
    gt = image_to_tensor(read_image(str(next((val / 'HR').glob('*.png')))))
    with torch.no_grad():
        sr = ref_net(lq)
    expected = calculate_psnr(tensor2img([sr]), tensor2img([gt]), 4, test_y_channel=True)
    assert reported == pytest.approx(expected, abs=1e-3)
    # and the paper's own metric, on the float output in the authors' BGR order
    from d2csr.metrics.paper_metrics import calculate_d2csr_paper_psnr

    paper = float(re.search(r'# psnr_paper: ([0-9.]+)', log).group(1))
    bgr = [t[0].permute(1, 2, 0).numpy()[..., ::-1].astype(np.float64) for t in (sr, gt)]
    assert paper == pytest.approx(calculate_d2csr_paper_psnr(*bgr, crop_border=4), abs=1e-3)
    assert '# ssim_paper: ' in log
    # val: save_panels: one panel per image and the PSNR table
    panels = results_dir(name) / 'visualization' / 'panels' / 'photos_val'
    assert [p.name for p in panels.glob('*.png')] == ['chelsea_panel.png']
    table = (panels / 'psnr_table.csv').read_text().splitlines()
    assert table[0] == 'image,bicubic,branch1,branch2,branch3,branch4,mean,fused,oracle'
    assert float(table[1].split(',')[7]) == pytest.approx(expected, abs=1e-3)
