"""One source of truth for the tree's shape: DivergenceLoss takes depth / width from network_g."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from basicsr.models import build_model

from conftest import ROOT, TINY_NET, tiny_options
from d2csr.losses import build_divergence_loss


def build_d2c_model(tmp_path, network, **overrides):
    """A D2CModel built in this process, as BasicSR's train pipeline builds it (no data is read)."""
    opt = tiny_options(tmp_path, 'tree_shape', network=network, **overrides)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False)
    for dataset in opt['datasets'].values():
        dataset['scale'] = opt['scale']
    torch.manual_seed(0)
    return build_model(opt)


def test_loss_takes_the_tree_shape_from_the_network(tmp_path):
    net = dict(TINY_NET, num_feat=8, fusion_feat=8, depth=1, width=3)
    model = build_d2c_model(tmp_path, net, **{'train:divergence_opt': {'type': 'DivergenceLoss', 'alpha': 1.0,
                                                                        'margins': 5e-5}})
    assert (model.cri_div.depth, model.cri_div.width) == (1, 3)
    assert model.cri_div.pair_margin.shape == (3, 3)
    # alpha is on from the first iteration: the triplet term over the 3 leaves runs
    g = torch.Generator().manual_seed(0)
    model.feed_data({'lq': torch.rand(2, 3, 8, 8, generator=g), 'gt': torch.rand(2, 3, 32, 32, generator=g)})
    model.optimize_parameters(1)
    assert model.log_dict['l_triplet'] > 0


def test_a_mismatch_stops_at_start_naming_both(tmp_path):
    net = dict(TINY_NET, num_feat=8, fusion_feat=8)  # depth 2, width 2
    with pytest.raises(ValueError) as err:
        build_d2c_model(tmp_path, net, **{'train:divergence_opt:depth': 1, 'train:divergence_opt:width': 4})
    msg = str(err.value)
    assert 'divergence_opt gives depth: 1, width: 4' in msg and 'network_g is a tree with depth: 2, width: 2' in msg
    # margins that do not fit the network's depth are named with the network's shape
    with pytest.raises(ValueError, match=r'does not fit network_g \(depth 3, width 2\).*margins'):
        build_divergence_loss({'type': 'DivergenceLoss', 'margins': [5e-5, 2e-5]}, SimpleNamespace(depth=3, width=2))


@pytest.mark.parametrize('path', sorted((ROOT / 'options').glob('train_*div*.yml')), ids=lambda p: p.name)
def test_shipped_divergence_options_fit_their_network(path):
    opt = yaml.safe_load(Path(path).read_text())
    loss_opt = opt['train']['divergence_opt']
    assert 'depth' not in loss_opt and 'width' not in loss_opt  # one source of truth: network_g
    net = opt['network_g']
    loss = build_divergence_loss(loss_opt, SimpleNamespace(depth=net.get('depth', 2), width=net.get('width', 2)))
    assert loss.pair_margin.shape == (net.get('width', 2) ** net.get('depth', 2),) * 2
