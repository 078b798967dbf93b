"""AGC against the official formula (nf_architecture.md §4.1), written naively per parameter."""
import pytest
import torch
from torch import nn

import normfree
from normfree.train.agc import agc_params, clip_grad_agc_


def reference_agc(w: torch.Tensor, g: torch.Tensor, unit_dim, clip=0.01, eps=1e-3):
    """DM SGD_AGC.update_param on one tensor, with the unit axis moved to the front."""
    if unit_dim is None:
        gn, wn = g.norm(), w.norm()
    else:
        wt, gt = w.movedim(unit_dim, 0), g.movedim(unit_dim, 0)
        wn = wt.reshape(wt.shape[0], -1).norm(dim=1)
        gn = gt.reshape(gt.shape[0], -1).norm(dim=1)
        shape = [-1] + [1] * (w.ndim - 1)
        wn, gn = wn.view(shape).movedim(0, unit_dim), gn.view(shape).movedim(0, unit_dim)
    max_norm = wn.clamp_min(eps) * clip
    return torch.where(gn > max_norm, g * max_norm / gn.clamp_min(1e-6), g), (gn > max_norm).sum().item()


def _set_grads(model, scale=1.0):
    """Random grads whose magnitude varies over orders of magnitude between and within tensors."""
    torch.manual_seed(1)
    for p in model.parameters():
        rows = 10 ** torch.empty((p.shape[0],) + (1,) * (p.ndim - 1) if p.ndim else ()).uniform_(-4, 0)
        p.grad = torch.randn_like(p) * scale * rows


def test_matches_official_formula_on_mixed_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv3d(8, 4, (2, 3, 3)), nn.ConvTranspose2d(4, 6, 3, groups=2),
                          nn.Linear(5, 7), nn.Conv1d(2, 3, 1))
    model.register_parameter("gain", nn.Parameter(torch.randn(8, 1, 1, 1)))
    model.register_parameter("skip", nn.Parameter(torch.tensor(0.0)))  # zero norm: eps floor matters
    model.register_parameter("skip2", nn.Parameter(torch.tensor(0.5)))  # scalars are clipped one by one
    model.register_parameter("skip3", nn.Parameter(torch.tensor(-2.0)))
    _set_grads(model, scale=0.05)
    model.skip2.grad, model.skip3.grad = torch.tensor(1.0), torch.tensor(1e-3)
    specs = agc_params(model)
    dims = {id(p): d for p, d in specs}
    assert dims[id(model[0].weight)] == 0 and dims[id(model[1].weight)] == 0
    assert dims[id(model[2].weight)] == 1  # ConvTranspose: (in, out/groups, kh, kw)
    assert dims[id(model.gain)] is None and dims[id(model.skip)] is None and dims[id(model[3].bias)] is None
    expected, n_clipped, n_units = {}, 0, 0
    for p, d in specs:
        expected[id(p)], c = reference_agc(p.detach(), p.grad.clone(), d)
        n_clipped += c
        n_units += 1 if d is None else p.shape[d]
    frac = clip_grad_agc_(specs, clip=0.01, eps=1e-3)
    for p, _ in specs:
        torch.testing.assert_close(p.grad, expected[id(p)], rtol=1e-5, atol=1e-7)
    assert 0 < n_clipped < n_units, "test should exercise both clipped and unclipped units"
    assert frac.item() == pytest.approx(n_clipped / n_units)


def test_per_output_unit_not_per_input_column():
    # One output row has a huge gradient; only that row may be clipped (the vballoli#1 bug clips columns).
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    lin.weight.grad = torch.full((3, 4), 1e-4)
    lin.weight.grad[1] = 10.0
    frac = clip_grad_agc_([(lin.weight, 0)], clip=0.01)
    torch.testing.assert_close(lin.weight.grad[0], torch.full((4,), 1e-4))
    torch.testing.assert_close(lin.weight.grad[1].norm(), torch.tensor(0.01 * 2.0))  # ‖W row‖ = 2
    assert frac.item() == pytest.approx(1 / 3)


def test_conv_transpose_units_are_dim1():
    ct = nn.ConvTranspose2d(2, 3, 1, bias=False)  # weight (in=2, out=3, 1, 1)
    with torch.no_grad():
        ct.weight.fill_(1.0)
    ct.weight.grad = torch.full_like(ct.weight, 1e-4)
    ct.weight.grad[:, 2] = 5.0  # output channel 2
    clip_grad_agc_(agc_params(ct))
    torch.testing.assert_close(ct.weight.grad[:, :2], torch.full((2, 2, 1, 1), 1e-4))
    torch.testing.assert_close(ct.weight.grad[:, 2].norm(), torch.tensor(0.01 * 2 ** 0.5))


def test_classifier_excluded_by_module_reference():
    model = normfree.create_model("nf_cifar_resnet20", width=0.25)
    specs = agc_params(model, exclude=(model.fc,))
    ids = {id(p) for p, _ in specs}
    assert id(model.fc.weight) not in ids and id(model.fc.bias) not in ids
    assert len(ids) == sum(1 for _ in model.parameters()) - 2
    with pytest.raises(ValueError, match="not part of the model"):
        agc_params(model, exclude=(nn.Linear(2, 2),))
    _set_grads(model, scale=10.0)
    fc_grad = model.fc.weight.grad.clone()
    frac = clip_grad_agc_(specs)
    assert torch.equal(model.fc.weight.grad, fc_grad) and frac.item() > 0.5


def test_plain_tensors_and_no_grads():
    w = nn.Parameter(torch.ones(3, 2))
    assert clip_grad_agc_([w]).item() == 0.0  # no grad: nothing to do
    w.grad = torch.full((3, 2), 100.0)
    assert clip_grad_agc_(w).item() == 1.0
    torch.testing.assert_close(w.grad.norm(dim=1), torch.full((3,), 0.01 * 2 ** 0.5))
    with pytest.raises(ValueError):
        clip_grad_agc_(w, clip=0.0)
