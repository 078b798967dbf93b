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
    """Tiny convs on a shared 2-core box: one intra-op thread is much faster than two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
