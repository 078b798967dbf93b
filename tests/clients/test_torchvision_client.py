"""torchvision with a normfree backbone: BackboneWithFPN (feature_info's names), create_feature_extractor
(FX), FasterRCNN training and inference, and two DDP steps over gloo with no unused parameter.
Needs torchvision, so it runs in the timm venv (``make test-timm``)."""
from __future__ import annotations

import pytest
import torch

import normfree

from .tiny import TINY, live, tiny_regnet

# torchvision is imported where it is used: the main venv deselects these tests (marker `timm`)
# without importing anything, so nothing reports a skip for a missing package there.
pytestmark = [pytest.mark.timm, pytest.mark.usefixtures("one_thread")]

OUT_INDICES = (2, 3, 4)
FPN = 8  # FPN channels


def _features() -> torch.nn.Module:
    torch.manual_seed(0)
    return live(normfree.create_model("nf_regnet_b0", features_only=True, out_indices=OUT_INDICES, **TINY))


def _backbone() -> torch.nn.Module:
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    feats = _features()
    return_layers = {name: str(i) for i, name in enumerate(feats.feature_info.module_name())}
    return BackboneWithFPN(feats, return_layers, feats.feature_info.channels(), FPN)


def _detector() -> torch.nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    levels = [str(i) for i in range(len(OUT_INDICES))]
    anchors = AnchorGenerator(sizes=tuple((16 * 2**i,) for i in range(len(levels) + 1)),
                              aspect_ratios=((0.5, 1.0, 2.0),) * (len(levels) + 1))  # + FPN's max-pool level
    return FasterRCNN(_backbone(), rpn_anchor_generator=anchors, min_size=64, max_size=64,
                      box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
                      box_head=TwoMLPHead(FPN * 7 * 7, 16), box_predictor=FastRCNNPredictor(16, 3),
                      rpn_batch_size_per_image=16, box_batch_size_per_image=16)


def _batch(seed: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 30.0]]),
                "labels": torch.tensor([1, 2])} for _ in images]
    return images, targets


def test_backbone_with_fpn_accepts_feature_info_names():
    """BackboneWithFPN's IntermediateLayerGetter takes feature_info.module_name() and returns the
    backbone's own maps, unchanged."""
    fpn, feats = _backbone().eval(), _features().eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        body, want, out = fpn.body(x), feats(x), fpn(x)
    assert list(body) == ["0", "1", "2"]
    for got, ref in zip(body.values(), want):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert [tuple(t.shape[1:]) for t in out.values()] == [(FPN, 8, 10), (FPN, 4, 5), (FPN, 2, 3), (FPN, 1, 2)]


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_create_feature_extractor_matches_forward_intermediates(form):
    """torchvision's FX-based extractor, with feature_info's module paths as return nodes."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = tiny_regnet().eval()
    model = normfree.deploy(model) if form == "deploy" else model
    nodes = {info["module"]: str(i) for i, info in enumerate(model.feature_info)}
    extractor = create_feature_extractor(model, return_nodes=nodes)
    x = torch.randn(2, 3, 45, 51)  # odd sizes: TF-SAME padding computed at run time
    with torch.no_grad():
        got, ref = extractor(x), model.forward_intermediates(x)
    assert list(got) == [str(i) for i in range(len(ref))]
    for g, r in zip(got.values(), ref):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


def test_faster_rcnn_trains_and_detects():
    det = _detector().train()
    images, targets = _batch(0)
    losses = det(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    body = det.backbone.body
    no_grad = [n for n, p in body.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []  # every backbone parameter learns (nothing after the last map, no classifier)
    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 2 and all(set(o) == {"boxes", "labels", "scores"} for o in out)
    assert all(o["boxes"].shape[1:] == (4,) and (o["boxes"] >= 0).all() and (o["boxes"] <= 64).all()
               for o in out)


def _ddp_rank(rank: int, world: int, init: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        det = torch.nn.parallel.DistributedDataParallel(_detector().train())  # find_unused_parameters off
        opt = torch.optim.SGD(det.parameters(), lr=0.01)
        for step in range(2):  # an unused parameter fails the second step's reduction
            opt.zero_grad()
            images, targets = _batch(10 * step + rank)  # each rank its own data
            sum(det(images, targets).values()).backward()
            opt.step()
        torch.save(det.module.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_steps_over_faster_rcnn(tmp_path):
    """Two processes, gloo, DistributedDataParallel with its defaults: both steps reduce, and the
    ranks, fed different data, end with the same weights, which moved."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_rank, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    init = _detector().state_dict()
    for k in init:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    moved = [k for k in init if init[k].is_floating_point() and not torch.equal(a[k], init[k])]
    assert any(k.startswith("backbone.body.") for k in moved) and any(k.startswith("roi_heads.") for k in moved)
