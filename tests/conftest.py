import pytest
import torch

import normfree


@pytest.fixture
def meta_model():
    """Build a registered model on the meta device: structure and shapes only, instant."""
    def build(name, **kwargs):
        with torch.device("meta"):
            return normfree.create_model(name, **kwargs)
    return build


def block_output_stats(model, x):
    """(avg channel squared mean, avg channel variance) after every residual block, via hooks."""
    stats = []

    def hook(_m, _i, out):
        mean = out.mean(dim=(0, 2, 3))
        stats.append(((mean**2).mean().item(), out.var(dim=(0, 2, 3), unbiased=False).mean().item()))

    handles = [b.register_forward_hook(hook) for b in model.blocks()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return stats


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convs on a shared 2-core box: one intra-op thread is much faster than two contended ones.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_private():
    """``make_private(model, x, y)`` → (private module, its optimizer): Opacus's ``PrivacyEngine`` on one
    full batch of (x, y), SGD lr 0.1, σ = 1, C = 1, no Poisson sampling (the step is deterministic)."""
    from opacus import PrivacyEngine

    def wrap(model, x, y):
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.warns(UserWarning, match="Secure RNG"):
            private, opt, _ = PrivacyEngine().make_private(module=model, optimizer=opt, data_loader=loader,
                                                           noise_multiplier=1.0, max_grad_norm=1.0,
                                                           poisson_sampling=False)
        return private, opt
    return wrap
