"""Opacus PrivacyEngine.make_private on a default-config model (stochastic depth and dropout on): the
per-example gradients follow the forward pass's own drop masks, and the private step runs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import normfree

from .tiny import TINY, live

pytestmark = pytest.mark.usefixtures("one_thread")
opacus = pytest.importorskip("opacus")
import normfree.privacy  # noqa: E402,F401  (registers normfree's layers with Opacus)
from opacus.validators import ModuleValidator  # noqa: E402

from normfree.models.blocks import set_fast_path  # noqa: E402


def test_make_private_default_config_model(make_private):
    torch.manual_seed(0)
    model = set_fast_path(live(normfree.create_model("nf_regnet_b0", **TINY)), False).train()
    assert max(b.drop_path.rate for b in model.blocks()) > 0 and model.drop.p > 0  # the defaults
    assert ModuleValidator.validate(model) == []
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))
    private, opt = make_private(model, x, y)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(3)
    F.cross_entropy(private(x), y).backward()
    dropped = [b for b in model.blocks() if b.drop_path.rate > 0]
    assert dropped  # blocks whose per-example masks the samplers must follow
    for n, p in model.named_parameters():
        # loss_reduction="mean": Opacus scales the samples by the batch size, so their mean is .grad
        assert p.grad_sample.shape == (8, *p.shape), n
        torch.testing.assert_close(p.grad_sample.mean(0), p.grad, rtol=1e-4, atol=1e-6, msg=n)
    opt.step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
