"""D2CSR: shapes, parameter counts, tree order, fusion weights and option validation."""
import pytest
import torch

from d2csr.archs import D2CSR

# Authors' model (REFERENCE.md section 2): tree parameters without the two 1x1 mean-shift convs.
AUTHORS_TREE_PARAMS = {2: 5_132_620, 3: 5_871_180, 4: 5_723_468, 8: 6_314_316}
AUTHORS_CONVERGENCE_PARAMS = 46_080


def count(params):
    return sum(p.numel() for p in params)


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_default_parameter_counts_equal_the_authors_model(scale):
    net = D2CSR(upscale=scale)
    assert count(net.divergence_parameters()) == AUTHORS_TREE_PARAMS[scale]
    assert count(net.convergence_parameters()) == AUTHORS_CONVERGENCE_PARAMS
    learnable = D2CSR(upscale=scale, mean_shift='learnable')
    assert count(learnable.parameters()) == AUTHORS_TREE_PARAMS[scale] + AUTHORS_CONVERGENCE_PARAMS + 24


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
@pytest.mark.parametrize('depth,width', [(1, 1), (1, 3), (2, 2), (3, 2), (2, 3)])
def test_shapes_for_scales_and_trees(scale, depth, width):
    torch.manual_seed(0)
    net = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=scale, depth=depth, width=width)
    x = torch.rand(2, 3, 6, 5)
    branches = net.forward_branches(x)
    assert len(branches) == width**depth == net.num_branches
    for b in branches:
        assert b.shape == (2, 3, 6 * scale, 5 * scale)
    sr, weights = net.fuse(branches)
    assert sr.shape == (2, 3, 6 * scale, 5 * scale)
    assert weights.shape == (2, width**depth, 6 * scale, 5 * scale)
    torch.testing.assert_close(weights.sum(1), torch.ones(2, 6 * scale, 5 * scale))
    torch.testing.assert_close(net(x), sr)


def test_fused_output_is_the_weighted_sum_of_branches():
    torch.manual_seed(0)
    net = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2)
    x = torch.rand(1, 3, 8, 8)
    branches = net.forward_branches(x)
    sr, w = net.fuse(branches)
    manual = sum(b * w[:, i:i + 1] for i, b in enumerate(branches))
    torch.testing.assert_close(sr, manual)
    assert not torch.allclose(branches[0], branches[1])  # weights are not shared


def test_leaf_order_is_depth_first_left_to_right():
    """Perturbing node 'body12' (breadth-first index 3) changes only leaf 2 (authors' order 11, 12, 21, 22)."""
    torch.manual_seed(0)
    net = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2)
    x = torch.rand(1, 3, 8, 8)
    before = [b.detach() for b in net.forward_branches(x)]
    with torch.no_grad():
        net.nodes[3][-1].bias.add_(1.0)
    after = net.forward_branches(x)
    changed = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert changed == [False, True, False, False]
    with torch.no_grad():
        net.nodes[0][-1].bias.add_(1.0)  # 'body1' feeds leaves 11 and 12
    changed = [not torch.equal(a, b) for a, b in zip(before, net.forward_branches(x))]
    assert changed == [True, True, False, False]


def test_deep_residual_false_is_the_papers_ablation_head_skip_kept():
    """Paper Table 5 "w/o Multi Deep Res" removes the residuals from intermediate branches to their
    sub-branches and keeps the one from the head features to the end branches: one conv per leaf
    (``res_convs.i.1``, named as in the full structure), and the leaf adds the head feature."""
    small = dict(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2)
    on, off, none = (D2CSR(**small), D2CSR(**small, deep_residual=False), D2CSR(**small, deep_residual='no_skip'))
    conv = 8 * 8 * 9 + 8
    assert count(on.parameters()) - count(off.parameters()) == 4 * 1 * conv  # the parents' convs only
    assert count(on.parameters()) - count(none.parameters()) == 4 * 2 * conv
    assert sorted(k for k in off.state_dict() if k.startswith('res_convs.0.')) == ['res_convs.0.1.bias',
                                                                                  'res_convs.0.1.weight']
    off.load_state_dict(on.state_dict(), strict=False)  # the kept convs have the full structure's names
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        for leaf in range(4):  # leaf = res_conv(node(parent)) + head: zero the conv and the node's output ...
            off.res_convs[leaf]['1'].weight.zero_()
            off.res_convs[leaf]['1'].bias.zero_()
        head = off.head(off._sub_mean(x))
        features = off.leaf_features(x)
    for feature in features:  # ... and the head feature reaches the leaf unchanged
        torch.testing.assert_close(feature, head)
    assert off(x).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match='deep_residual'):
        D2CSR(**small, deep_residual='yes')


def test_checkpoints_of_the_former_deep_residual_false_still_load(tmp_path):
    """d2csr's former ``false`` had no res_convs at all (now ``'no_skip'``): such weights loaded into a
    ``false`` network switch it to ``'no_skip'`` (with a warning) and compute what they computed; options
    inferred from them say ``'no_skip'``; the paper's ablation infers as ``false``."""
    from d2csr.archs.infer_options import infer_network_options

    small = dict(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2)
    torch.manual_seed(0)
    legacy = D2CSR(**small, deep_residual='no_skip').eval()
    x = torch.rand(1, 3, 5, 4)
    net = D2CSR(**small, deep_residual=False).eval()
    with pytest.warns(UserWarning, match='no_skip'):
        net.load_state_dict(legacy.state_dict(), strict=True)
    assert net.deep_residual == 'no_skip'
    with torch.no_grad():
        torch.testing.assert_close(net(x), legacy(x), rtol=0, atol=0)
    assert infer_network_options(legacy.state_dict())['deep_residual'] == 'no_skip'
    assert infer_network_options(D2CSR(**small, deep_residual=False).state_dict())['deep_residual'] is False
    assert infer_network_options(D2CSR(**small).state_dict())['deep_residual'] is True


def test_learnable_mean_shift_starts_as_the_fixed_shift():
    torch.manual_seed(0)
    fixed = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2)
    learn = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2, mean_shift='learnable')
    learn.load_state_dict(fixed.state_dict(), strict=False)
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(learn(x), fixed(x), rtol=1e-5, atol=1e-5)


def test_frozen_tree_runs_without_autograd():
    net = D2CSR(num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2)
    for p in net.divergence_parameters():
        p.requires_grad_(False)
    out = net(torch.rand(1, 3, 8, 8))
    out.mean().backward()
    assert all(p.grad is not None for p in net.convergence_parameters())


@pytest.mark.parametrize('kwargs,name', [
    (dict(depth=0), 'depth'),
    (dict(width=0), 'width'),
    (dict(upscale=5), 'upscale'),
    (dict(num_feat=60, squeeze_factor=16), 'squeeze_factor'),
    (dict(mean_shift='wrong'), 'mean_shift'),
    (dict(backbone='nope'), 'backbone'),
])
def test_invalid_options_raise_value_error_naming_the_option(kwargs, name):
    with pytest.raises(ValueError, match=name):
        D2CSR(**kwargs)


def test_every_arch_refuses_a_non_positive_or_non_integer_size_with_one_message():
    """One check (``d2csr.archs.arch_util.check_int``) names the option, the minimum and the value."""
    from d2csr.archs import IMDN, RDN, VDSR
    from d2csr.archs.branch_modules import build_branch_module

    cases = [(lambda: D2CSR(num_feat=16, num_group=1, num_block=1, squeeze_factor=4, depth=0, width=2),
              'network_g:depth must be an integer >= 1, got 0'),
             (lambda: build_branch_module('rcan', 16, num_group=True), 'network_g:num_group must be an integer >= 1, got True'),
             (lambda: RDN(num_feat=0), 'RDN: num_feat must be an integer >= 1, got 0'),
             (lambda: IMDN(upscale=2.0), 'IMDN: upscale must be an integer >= 1, got 2.0'),
             (lambda: VDSR(num_conv=2), 'VDSR: num_conv must be an integer >= 3 (first, middle and last layer), got 2')]
    for build, message in cases:
        with pytest.raises(ValueError) as error:
            build()
        assert str(error.value) == message
