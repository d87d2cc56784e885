"""The real-world SR data sets read as downloaded (miniature trees with the real layouts and names), and every
kind of bad input they must refuse clearly. In-process and fast; training runs are in test_data_train.py."""
import contextlib
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from basicsr.data import build_dataset
from basicsr.utils.registry import DATASET_REGISTRY
from conftest import ROOT
from d2csr.data.pair_index import DataError
from data_trees import (camera_pairs_tree, d2crealsr_tree, drealsr_tree, make_pair, read_rgb, realsr_tree,
                        write_pair_list)


@pytest.fixture(scope='module')
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp('layouts')
    return dict(
        realsr=realsr_tree(root / 'RealSR_V3', extra_for=('rocket', 'camera')),
        old=realsr_tree(root / 'RealSR_old', lq_at_gt_size=True, extra_for=()),
        drealsr=drealsr_tree(root / 'DRealSR'),
        d2c=d2crealsr_tree(root / 'D2CRealSR'),
        cam=camera_pairs_tree(root / 'cam'),
        root=root,
    )


def build(type_, phase='val', scale=4, **opt):
    opt = dict(name=f'{type_}_{phase}', type=type_, scale=scale, phase=phase, io_backend={'type': 'disk'}, **opt)
    if phase == 'train':
        opt = dict(dict(gt_size=32, use_hflip=True, use_rot=True), **opt)
    return build_dataset(opt)


def rgb_tensor(img):
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255.


def test_data_set_types_are_registered():
    for name in ('RealSRDataset', 'DRealSRDataset', 'D2CRealSRDataset', 'PairListDataset', 'PairedFolderDataset'):
        assert DATASET_REGISTRY.get(name).__name__ == name


@contextlib.contextmanager
def basicsr_log():
    """Records of BasicSR's logger (it does not propagate, so pytest's caplog does not see them)."""
    records, handler = [], logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger('basicsr')
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_realsr_v3_reads_both_cameras_and_crops_too_large_hr(trees):
    with basicsr_log() as records:
        val = build('RealSRDataset', dataroot=str(trees['realsr']))
        val[0], val[1], val[1]
    assert [Path(p['gt_path']).name for p in val.paths] == ['Canon_001_HR.png', 'Nikon_001_HR.png']
    assert [Path(p['lq_path']).name for p in val.paths] == ['Canon_001_LR4.png', 'Nikon_001_LR4.png']
    # Nikon_001 (test) has an HR 3 px too large: cropped to 4 x LR at the top left, warned once for the data set
    warnings = [r.getMessage() for r in records if 'cropped to 4 x LR' in r.getMessage()]
    assert len(warnings) == 1 and '1 of 2 HR images' in warnings[0] and 'Nikon_001_HR.png' in warnings[0]
    item = val[1]
    hr = read_rgb(val.paths[1]['gt_path'])
    lr = read_rgb(val.paths[1]['lq_path'])
    assert hr.shape == (99, 99, 3) and lr.shape == (24, 24, 3)
    assert set(item) == {'lq', 'gt', 'lq_path', 'gt_path'}
    assert torch.equal(item['gt'], rgb_tensor(hr[:96, :96]))
    assert torch.equal(item['lq'], rgb_tensor(lr))

    train = build('RealSRDataset', phase='train', dataroot=str(trees['realsr']))
    assert len(train) == 3  # Canon_001, Canon_002, Nikon_001 of Train/4
    for i in range(len(train)):
        item = train[i]
        assert item['lq'].shape == (3, 8, 8) and item['gt'].shape == (3, 32, 32)
    # one camera, or the camera folder itself
    assert len(build('RealSRDataset', dataroot=str(trees['realsr']), cameras=['Canon'])) == 1
    assert len(build('RealSRDataset', dataroot=str(trees['realsr'] / 'Nikon'))) == 1


def test_realsr_lr_at_hr_size_needs_the_option_then_downsamples_bicubic(trees):
    with pytest.raises(DataError) as err:
        build('RealSRDataset', dataroot=str(trees['old']))
    message = str(err.value)
    assert 'lq_at_gt_size: bicubic' in message and 'Canon_001_LR4.png' in message and 'Nikon_001_LR4.png' in message
    ds = build('RealSRDataset', dataroot=str(trees['old']), lq_at_gt_size='bicubic')
    item = ds[0]
    assert item['gt'].shape == (3, 96, 96) and item['lq'].shape == (3, 24, 24)
    stored = read_rgb(ds.paths[0]['lq_path'])
    assert stored.shape == (96, 96, 3)
    expected = cv2.resize(stored.astype(np.float32) / 255., (24, 24), interpolation=cv2.INTER_CUBIC)
    assert torch.allclose(item['lq'], torch.from_numpy(np.clip(expected, 0, 1).transpose(2, 0, 1)), atol=1e-6)
    # and it is close to the true small LR it was upsampled from
    _, small = make_pair('chelsea', 4, 96, [4, 0, False])
    psnr = 10 * torch.log10(1 / torch.mean((item['lq'] - rgb_tensor(small)) ** 2))
    assert psnr > 28, psnr


def test_drealsr_d2crealsr_list_and_folder_pairs(trees, tmp_path):
    train = build('DRealSRDataset', phase='train', dataroot=str(trees['drealsr']))
    assert [Path(p['lq_path']).name for p in train.paths] == ['DSC_1450_x1_1.png', 'DSC_1451_x1_2.png']
    test = build('DRealSRDataset', dataroot=str(trees['drealsr'] / 'x4'))  # the x4 folder itself works too
    assert [Path(p['gt_path']).name for p in test.paths] == ['DSC_1450_x4.png', 'DSC_1451_x4.png']
    assert test[0]['lq'].shape == (3, 24, 24) and test[0]['gt'].shape == (3, 96, 96)

    d2c = build('D2CRealSRDataset', phase='train', scale=8, dataroot=str(trees['d2c']), gt_size=64)
    assert len(d2c) == 2 and d2c[1]['lq'].shape == (3, 8, 8) and d2c[1]['gt'].shape == (3, 64, 64)
    d2c_test = build('D2CRealSRDataset', scale=8, dataroot=str(trees['d2c']))
    assert d2c_test[0]['lq'].shape == (3, 16, 16) and d2c_test[0]['gt'].shape == (3, 128, 128)

    # the authors' list (tab separated, absolute paths) and a relative one with a comment
    v3 = trees['realsr'] / 'Canon' / 'Test' / '4'
    listed = write_pair_list(tmp_path / 'abs.txt', [(v3 / 'Canon_001_LR4.png', v3 / 'Canon_001_HR.png')])
    ds = build('PairListDataset', meta_info_file=str(listed))
    assert torch.equal(ds[0]['gt'], build('RealSRDataset', dataroot=str(trees['realsr']), cameras=['Canon'])[0]['gt'])
    (tmp_path / 'rel.txt').write_text('# lr hr\nCanon/Test/4/Canon_001_LR4.png Canon/Test/4/Canon_001_HR.png\n\n')
    assert len(build('PairListDataset', meta_info_file=str(tmp_path / 'rel.txt'), dataroot=str(trees['realsr']))) == 1

    cam = trees['cam']
    by_tmpl = build('PairedFolderDataset', dataroot_gt=str(cam / 'HR'), dataroot_lq=str(cam / 'LR'),
                    filename_tmpl='{}_lr')
    by_regex = build('PairedFolderDataset', dataroot_gt=str(cam / 'HR'), dataroot_lq=str(cam / 'LR'),
                     lq_regex=r'IMG_(\d+)_lr', gt_regex=r'IMG_(\d+)')
    assert by_tmpl.paths == by_regex.paths and len(by_tmpl) == 2
    # one folder holding both sides (RealSR's layout) through templates
    same = build('PairedFolderDataset', dataroot_gt=str(v3), dataroot_lq=str(v3), filename_tmpl='{}_LR4',
                 gt_filename_tmpl='{}_HR')
    assert [Path(p['lq_path']).name for p in same.paths] == ['Canon_001_LR4.png']


def copy_tree(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unmatched_hr_and_lr_are_all_listed_at_once(trees, tmp_path):
    root = copy_tree(trees['realsr'], tmp_path / 'RealSR_V3')
    (root / 'Canon' / 'Train' / '4' / 'Canon_001_LR4.png').unlink()
    (root / 'Canon' / 'Train' / '4' / 'Canon_002_HR.png').unlink()
    folder = root / 'Canon' / 'Train' / '4'
    shutil.copy(folder / 'Canon_002_LR4.png', folder / 'Canon_009_LR3.png')
    (root / 'Nikon' / 'Train' / '4' / 'Nikon_001_LR4.png').unlink()  # the other camera: reported in the same error
    with pytest.raises(DataError) as err:
        build('RealSRDataset', phase='train', dataroot=str(root))
    message = str(err.value)
    assert 'HR without LR (1): Canon_001_HR.png (expected Canon_001_LR4.*)' in message
    assert 'LR without HR (1): Canon_002_LR4.png (expected Canon_002_HR.*)' in message
    assert 'Canon_009_LR3.png' in message  # belongs to no pattern of the x4 folder
    assert 'HR without LR (1): Nikon_001_HR.png (expected Nikon_001_LR4.*)' in message

    cam = copy_tree(trees['cam'], tmp_path / 'cam')
    (cam / 'LR' / 'IMG_0002_lr.png').rename(cam / 'LR' / 'IMG_0003_lr.png')
    with pytest.raises(DataError, match=r'(?s)HR without LR \(1\): IMG_0002.png.*LR without HR \(1\): IMG_0003_lr.png'):
        build('PairedFolderDataset', dataroot_gt=str(cam / 'HR'), dataroot_lq=str(cam / 'LR'), filename_tmpl='{}_lr')


def test_empty_folders_wrong_layouts_and_missing_scales_are_clear_errors(trees, tmp_path):
    (tmp_path / 'HR').mkdir()
    (tmp_path / 'LR').mkdir()
    with pytest.raises(DataError, match='contains no images'):
        build('PairedFolderDataset', dataroot_gt=str(tmp_path / 'HR'), dataroot_lq=str(tmp_path / 'LR'))
    with pytest.raises(DataError, match="neither Canon/ nor Nikon/"):
        build('RealSRDataset', dataroot=str(trees['drealsr']))
    with pytest.raises(DataError, match='has no test_HR/ and test_LR/'):
        build('D2CRealSRDataset', scale=8, dataroot=str(trees['realsr']))
    with pytest.raises(DataError, match='does not exist'):
        build('DRealSRDataset', dataroot=str(tmp_path / 'nowhere'))
    with pytest.raises(DataError, match='RealSR has scales 2, 3, 4, not 8'):
        build('RealSRDataset', scale=8, dataroot=str(trees['realsr']))
    with pytest.raises(DataError, match='D2CRealSR has scales 8, not 4'):
        build('D2CRealSRDataset', dataroot=str(trees['d2c']))
    with pytest.raises(DataError, match=r"Canon/Test/2' does not exist .*has \['4'\]"):
        build('RealSRDataset', scale=2, dataroot=str(trees['realsr']))
    with pytest.raises(DataError, match='no Test_x3/test_HR'):
        build('DRealSRDataset', scale=3, dataroot=str(trees['drealsr']))
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        build('RealSRDataset', dataroot=str(trees['realsr']), split='Training')
    with pytest.raises(DataError, match='lq_at_gt_size must be'):
        build('RealSRDataset', dataroot=str(trees['realsr']), lq_at_gt_size='nearest')
    with pytest.raises(DataError, match='use PairedFolderDataset or PairedImageDataset'):
        build_dataset(dict(name='x', type='RealSRDataset', scale=4, phase='val', dataroot=str(trees['realsr']),
                           io_backend={'type': 'lmdb'}))
    with pytest.raises(DataError, match='needs a group'):
        build('PairedFolderDataset', dataroot_gt=str(trees['cam'] / 'HR'), dataroot_lq=str(trees['cam'] / 'LR'),
              lq_regex='IMG_.*_lr', gt_regex='IMG_.*')


def test_wrong_size_ratio_names_every_pair(trees, tmp_path):
    root = copy_tree(trees['realsr'], tmp_path / 'RealSR_V3')
    folder = root / 'Canon' / 'Train' / '4'
    for stem in ('Canon_001', 'Canon_002'):  # an x3 LR put in the x4 folder
        hr = cv2.imread(str(folder / f'{stem}_HR.png'))
        cv2.imwrite(str(folder / f'{stem}_LR4.png'), cv2.resize(hr, (hr.shape[1] // 3, hr.shape[0] // 3)))
    with pytest.raises(DataError) as err:
        build('RealSRDataset', phase='train', dataroot=str(root))
    message = str(err.value)
    assert 'size ratio is not the scale (2)' in message
    assert 'Canon_001_HR.png (96x96) / Canon_001_LR4.png (32x32): size ratio 3.00 x 3.00, not the scale 4' in message
    assert 'Canon_002_HR.png (99x99) / Canon_002_LR4.png (33x33)' in message


def test_unreadable_and_corrupt_images_are_named(trees, tmp_path):
    root = copy_tree(trees['realsr'], tmp_path / 'RealSR_V3')
    folder = root / 'Nikon' / 'Train' / '4'
    (folder / 'Nikon_001_HR.png').write_bytes(b'this is not a PNG')
    with pytest.raises(DataError, match=r'unreadable or not an image \(1\): .*Nikon_001_HR.png'):
        build('RealSRDataset', phase='train', dataroot=str(root))
    # a header that reads but data that does not decode: found when the image is loaded
    good = (trees['realsr'] / 'Nikon' / 'Train' / '4' / 'Nikon_001_HR.png').read_bytes()
    (folder / 'Nikon_001_HR.png').write_bytes(good[:len(good) // 3])
    ds = build('RealSRDataset', phase='train', dataroot=str(root))
    with pytest.raises(DataError, match=r'cannot decode .*Nikon_001_HR.png \(corrupt or not an image\)'):
        ds[2]


def test_pair_list_lists_every_bad_line(trees, tmp_path):
    v3 = trees['realsr'] / 'Canon' / 'Test' / '4'
    listed = tmp_path / 'list.txt'
    listed.write_text(f'{v3}/Canon_001_LR4.png {v3}/Canon_001_HR.png\n'
                      f'{v3}/Canon_007_LR4.png {v3}/Canon_001_HR.png\n'
                      f'only_one_path.png\n')
    with pytest.raises(DataError) as err:
        build('PairListDataset', meta_info_file=str(listed))
    message = str(err.value)
    assert '2 bad line(s)' in message and 'line 2:' in message and 'Canon_007_LR4.png does not exist' in message
    assert "line 3: expected \"lr_path hr_path\", got 'only_one_path.png'" in message
    with pytest.raises(DataError, match='does not exist'):
        build('PairListDataset', meta_info_file=str(tmp_path / 'missing.txt'))


def paper_option_files():
    files = sorted((ROOT / 'options').glob('t*_D2C_*x[2348].yml'))
    stems = ('train_D2C_div', 'train_D2C_conv', 'test_D2C_x', 'test_D2C_DRealSR')
    return [f for f in files if f.name.startswith(stems)]


def miniature_roots(tmp_path):
    """The three downloads, in miniature, under the names datasets/README.md gives them."""
    roots = {'datasets/RealSR_V3': tmp_path / 'RealSR_V3', 'datasets/DRealSR': tmp_path / 'DRealSR',
             'datasets/D2CRealSR': d2crealsr_tree(tmp_path / 'D2CRealSR', train=('coins', ))}
    for s in (2, 3, 4):
        realsr_tree(roots['datasets/RealSR_V3'], scale=s, train=(('Canon', 'coins'), ('Nikon', 'camera')),
                    test=(('Canon', 'coins'), ('Nikon', 'camera')), side=48, extra_for=())
        drealsr_tree(roots['datasets/DRealSR'], scale=s, train=('coins', ), test=('camera', ), side=48)
    return roots


def test_every_paper_setting_has_options_that_read_the_downloaded_layouts(tmp_path):
    files = {f.name for f in paper_option_files()}
    for s in (2, 3, 4):
        assert {f'train_D2C_div_x{s}.yml', f'train_D2C_conv_x{s}.yml', f'test_D2C_x{s}.yml',
                f'test_D2C_DRealSR_x{s}.yml'} <= files
    assert {'train_D2C_div_x8.yml', 'train_D2C_conv_x8.yml', 'test_D2C_x8.yml'} <= files
    roots = miniature_roots(tmp_path)
    for path in paper_option_files():
        opt = yaml.safe_load(path.read_text())
        scale = opt['scale']
        assert opt['network_g']['upscale'] == scale, path.name
        if path.name.startswith('test_D2C_DRealSR'):  # cross-data: RealSR-trained weights
            assert opt['path']['pretrain_network_g'] == f'experiments/D2C_conv_x{scale}/models/net_g_latest.pth'
        for phase, dopt in opt['datasets'].items():
            expected = 'D2CRealSRDataset' if scale == 8 else \
                'DRealSRDataset' if 'DRealSR' in path.name else 'RealSRDataset'
            assert dopt['type'] == expected, (path.name, phase)
            dopt = dict(dopt, dataroot=str(roots[dopt['dataroot']]), scale=scale, phase=phase.split('_')[0])
            if phase == 'train':
                assert dopt['gt_size'] == 96 * scale and dopt['split'] == 'train'
                dopt['gt_size'] = 8 * scale
            ds = build_dataset(dopt)
            item = ds[0]
            assert item['gt'].shape[-1] == scale * item['lq'].shape[-1], (path.name, phase)


ROOT_KEYS = ('dataroot', 'dataroot_gt', 'dataroot_lq', 'meta_info_file')


def test_every_option_file_reads_a_folder_a_documented_step_makes(tmp_path):
    """No option file reads a folder that no documented command makes (the Table-3 and baseline files and
    test_D2C_official_x4.yml read datasets/RealSR_x4/{train,test}/{HR,LR} before): every data root is one of
    the downloads datasets/README.md says where to put, and the data set builds from it."""
    readme = (ROOT / 'datasets' / 'README.md').read_text()
    roots = miniature_roots(tmp_path)
    files = sorted((ROOT / 'options').glob('*.yml'))
    assert len(files) >= 49
    for path in files:
        opt = yaml.safe_load(path.read_text())
        for phase, dopt in opt['datasets'].items():
            named = {k: dopt[k] for k in ROOT_KEYS if dopt.get(k)}
            assert set(named) == {'dataroot'} and named['dataroot'] in roots, (path.name, phase, named)
            assert f'`{named["dataroot"]}/`' in readme, named['dataroot']
            dopt = dict(dopt, dataroot=str(roots[dopt['dataroot']]), scale=opt['scale'], phase=phase.split('_')[0])
            if phase == 'train':
                dopt['gt_size'] = 8 * opt['scale']
            item = build_dataset(dopt)[0]
            assert item['gt'].shape[-1] == opt['scale'] * item['lq'].shape[-1], (path.name, phase)


def test_drealsr_is_read_with_its_public_naming_and_either_way_round(tmp_path):
    """The public download names HR NAME_x4.png (test_HR) and LR NAME_x1.png (test_LR); the reverse naming and
    HR / LR folders swapped give the same pairs: names pair without the token, the larger image is the HR."""
    items = {}
    for naming in ('public', 'x1_hr', 'swapped_folders'):
        root = drealsr_tree(tmp_path / naming, naming=naming)
        with basicsr_log() as records:
            ds = build('DRealSRDataset', dataroot=str(root))
        items[naming] = [ds[i] for i in range(len(ds))]
        assert len(ds) == 2 and items[naming][0]['gt'].shape == (3, 96, 96)
        swapped = [r.getMessage() for r in records if 'taken with it as HR' in r.getMessage()]
        assert len(swapped) == (naming == 'swapped_folders')
    for naming in ('x1_hr', 'swapped_folders'):
        for a, b in zip(items['public'], items[naming]):
            assert torch.equal(a['gt'], b['gt']) and torch.equal(a['lq'], b['lq'])
    names = sorted(p.name for p in (tmp_path / 'public' / 'x4' / 'Test_x4' / 'test_HR').iterdir())
    assert names == ['DSC_1450_x4.png', 'DSC_1451_x4.png']
    # a name without a scale token, or with another scale's, is still named as such
    (tmp_path / 'public' / 'x4' / 'Test_x4' / 'test_LR' / 'DSC_1451_x1.png').rename(
        tmp_path / 'public' / 'x4' / 'Test_x4' / 'test_LR' / 'DSC_1451_x2.png')
    with pytest.raises(DataError, match=r'HR without LR \(1\): DSC_1451_x4.png \(expected DSC_1451_x1.\*\)'):
        build('DRealSRDataset', dataroot=str(tmp_path / 'public'))


def test_a_set_of_another_size_than_published_is_warned_about(tmp_path):
    from d2csr.data.pair_index import PUBLISHED_COUNTS, count_warning

    canon_only = realsr_tree(tmp_path / 'RealSR_V3', train=(('Canon', 'rocket'), ),
                             test=(('Canon', 'chelsea'), ('Canon', 'coffee')))
    with basicsr_log() as records:
        build('RealSRDataset', dataroot=str(canon_only))
    warnings = [r.getMessage() for r in records if 'its authors publish' in r.getMessage()]
    assert len(warnings) == 1
    assert 'RealSR (V3) x4 test: 2 pairs found, its authors publish 100' in warnings[0]
    assert 'is one camera missing from the download?' in warnings[0]
    # the published counts, and no warning when they are met
    assert PUBLISHED_COUNTS['realsr']['test'][4] == 100 and PUBLISHED_COUNTS['realsr']['train'][2] == 459
    assert [PUBLISHED_COUNTS['drealsr']['test'][s] for s in (2, 3, 4)] == [83, 84, 93]
    assert [PUBLISHED_COUNTS['drealsr']['train'][s] for s in (2, 3, 4)] == [884, 783, 840]
    assert PUBLISHED_COUNTS['d2crealsr'] == {'train': {8: 100}, 'test': {8: 15}}
    assert count_warning('drealsr', 'test', 3, 84) is None
    assert 'cameras Canon selected' in count_warning('realsr', 'train', 4, 230, cameras=['Canon'])
    full = d2crealsr_tree(tmp_path / 'D2CRealSR', train=(), test=('coffee', ) * 15, side=16)
    with basicsr_log() as records:
        assert len(build('D2CRealSRDataset', scale=8, dataroot=str(full))) == 15
    assert not [r for r in records if 'its authors publish' in r.getMessage()]


def test_a_missing_data_folder_names_the_option_and_the_step_that_makes_it(tmp_path):
    """Before: a bare FileNotFoundError from deep in the data set, after the results folder was made."""
    from conftest import results_dir, run_entry, unique_name, write_options
    from d2csr.data.eval_check import check_data_roots

    opt = yaml.safe_load((ROOT / 'options' / 'test_D2C_official_x4.yml').read_text())
    opt.update(name=unique_name('missing_data'), num_gpu=0)
    proc = run_entry('test', '-opt', write_options(opt, tmp_path / 'test.yml'), check=False)
    assert proc.returncode != 0
    assert ("datasets:test_1:dataroot 'datasets/RealSR_V3' does not exist; it is the RealSR (V3) download: put it "
            'there as downloaded') in proc.stderr
    assert not results_dir(opt['name']).exists()  # stopped before anything was written
    # a prepared copy (BasicSR's PairedImageDataset): the prepare_dataset command that makes it, all at once
    opt['datasets']['test_1'] = dict(name='t', type='PairedImageDataset', dataroot_gt='datasets/RealSR_x4/test/HR',
                                     dataroot_lq=str(tmp_path))
    opt['datasets']['val_2'] = dict(name='v', type='PairedImageDataset', dataroot_gt='my/DRealSR_x3/train_sub/HR.lmdb',
                                    dataroot_lq='my/DRealSR_x3/train_sub/LR.lmdb')
    with pytest.raises(DataError) as info:
        check_data_roots(opt)
    message = str(info.value)
    assert message.startswith('3 data folder(s) of the options are missing')
    assert ("datasets:test_1:dataroot_gt 'datasets/RealSR_x4/test/HR' does not exist; make it with: python "
            'scripts/prepare_dataset.py realsr --root datasets/RealSR_V3 --scale 4 --split test --out '
            'datasets/RealSR_x4/test') in message
    assert ('--scale 3 --split train --out my/DRealSR_x3/train_sub --lmdb' in message
            and 'datasets:val_2:dataroot_lq' in message)
