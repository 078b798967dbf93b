"""The meta device: build without memory, materialize with to_empty, initialize with init_weights or
every module's reset_parameters; forward/backward and FlopCounterMode on meta tensors."""
from __future__ import annotations

import torch

import normfree

from .tiny import TINY


def test_meta_build_to_empty_init_weights_matches_a_fresh_model():
    torch.manual_seed(0)
    fresh = normfree.create_model("nf_regnet_b0", **TINY)
    meta = normfree.create_model("nf_regnet_b0", device="meta", **TINY)
    assert all(p.is_meta for p in meta.parameters())
    torch.manual_seed(0)
    meta.to_empty(device="cpu").init_weights()
    for (k, v), (_, ref) in zip(meta.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(v, ref, rtol=0, atol=0, msg=k)


def test_meta_forward_backward_and_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    meta = normfree.create_model("nf_regnet_b0", device="meta", **TINY)
    x = torch.randn(2, 3, 64, 64, device="meta")
    meta(x).sum().backward()
    assert meta.stem.conv.weight.grad.is_meta
    with FlopCounterMode(display=False) as counter:
        meta(x)
    cpu = normfree.create_model("nf_regnet_b0", **TINY)
    with FlopCounterMode(display=False) as ref:
        cpu(torch.randn(2, 3, 64, 64))
    assert counter.get_total_flops() == ref.get_total_flops() > 0


def test_meta_build_to_empty_reset_parameters_on_every_module_matches_fresh_statistics():
    """The generic recipe (FSDP, accelerate): to_empty, then every module's reset_parameters. Each
    tensor comes back finite, constants (gains, biases, skip gains) exactly, random weights with the
    fresh model's mean and std (within 4 standard errors of a sample of that size; the small SE biases
    pooled). The classifier stays exactly an ``nn.Linear`` and its ``reset_parameters`` gives the
    family's init (zeros for NF-RegNet, not nn.Linear's default)."""
    torch.manual_seed(0)
    fresh = normfree.create_model("nf_regnet_b0", **TINY).state_dict()
    with torch.device("meta"):
        meta = normfree.create_model("nf_regnet_b0", **TINY)
    meta.to_empty(device="cpu")
    torch.manual_seed(1)  # other draws than the fresh model's: only the distribution must match
    for module in meta.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    small: tuple[list, list] = ([], [])
    assert type(meta.fc) is torch.nn.Linear
    for k, v in meta.state_dict().items():
        ref = fresh[k]
        assert torch.isfinite(v).all(), k
        if torch.all(ref == ref.flatten()[0]):
            torch.testing.assert_close(v, ref, rtol=0, atol=0, msg=k)
        elif ref.numel() < 32:
            small[0].append(v.flatten())
            small[1].append(ref.flatten())
        else:
            _same_distribution(v, ref, k)
    assert small[0]
    _same_distribution(torch.cat(small[0]), torch.cat(small[1]), "small tensors")
    meta.init_weights()
    torch.testing.assert_close(meta.fc.weight, fresh["fc.weight"], rtol=0, atol=0)


def _same_distribution(v: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    n = ref.numel()
    assert abs(v.mean().item() - ref.mean().item()) < 4 * ref.std().item() / n**0.5, what
    assert abs(v.std().item() / ref.std().item() - 1) < 4 / (2 * n) ** 0.5, what


def test_classifier_reset_parameters_draws_the_family_init_and_survives_copies():
    """NF-ResNet's classifier is N(0, 0.01) (nn.Linear's own default would be U(±1/√64), std 0.072);
    a deep copy's classifier re-initializes itself, not the original's."""
    import copy

    model = normfree.create_model("nf_cifar_resnet20")
    ref = torch.empty_like(model.fc.weight).normal_(0.0, 0.01)
    model.fc.bias.data.fill_(1.0)
    model.fc.reset_parameters()
    _same_distribution(model.fc.weight.detach(), ref, "fc.weight")
    assert not model.fc.bias.any()
    twin = copy.deepcopy(model)
    before = model.fc.weight.detach().clone()
    twin.fc.reset_parameters()
    assert torch.equal(model.fc.weight, before) and not torch.equal(twin.fc.weight, before)
