import pytest
import torch
import torch.nn.functional as F

import normfree
from normfree.train import per_example_grads


def _model(name: str = "nf_cifar_resnet20", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = normfree.create_model(name, width=0.25, num_classes=5, stochdepth_rate=0.0, **kw)
    with torch.no_grad():  # non-zero skip gains so every branch's weights get gradients
        for b in model.blocks():
            if b.skip_gain is not None:
                b.skip_gain.fill_(0.5)
    return model


@pytest.mark.parametrize("kw", [{}, {"use_se": True, "activation": "gelu"}])
def test_per_example_grads_equal_one_example_at_a_time(kw):
    model = _model(**kw).train()
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 3, 1])
    grads = per_example_grads(model, x, y)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(grads) == names
    for i in range(3):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(grads[n][i], p.grad, rtol=1e-4, atol=1e-6)


def test_nf_batch_gradient_is_the_mean_of_per_example_gradients():
    """No cross-example interaction: the property DP-SGD needs (and BatchNorm lacks)."""
    model = _model().train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    grads = per_example_grads(model, x, y, chunk_size=2)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n].mean(0), p.grad, rtol=1e-4, atol=1e-6)


def test_batch_statistics_are_refused_in_training_but_fine_in_eval():
    model = _model("bn_cifar_resnet20").train()
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="batch statistics"):
        per_example_grads(model, x, y)
    grads = per_example_grads(model.eval(), x, y)
    assert grads["fc.weight"].shape == (2, 5, model.fc.in_features)
    with pytest.raises(ValueError, match="2 inputs but 3 targets"):
        per_example_grads(model, x, torch.tensor([0, 1, 2]))
