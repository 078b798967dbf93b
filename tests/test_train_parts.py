"""Schedule, EMA, parameter groups, augmentation, data loaders, config and checkpoint files."""
import pickle

import numpy as np
import pytest
import torch

import normfree
from normfree.errors import NormfreeError
from normfree.train.checkpoint import load_checkpoint, save_checkpoint
from normfree.train.config import TrainConfig
from normfree.train.data import load_data, mix_batch, pad_crop_flip, step_generator
from normfree.train.optim import ModelEMA, lr_at, param_groups


def test_warmup_cosine_schedule():
    lrs = [lr_at(s, 1.0, 10, 110, min_lr=0.01) for s in range(111)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.01 + 0.99 * 0.5) and lrs[110] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_ema_official_warmup():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.999)
    old = ema.state["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)  # d = min(0.999, 1/10) = 0.1
    torch.testing.assert_close(ema.state["weight"], 0.1 * old + 0.9 * model.weight)
    before = ema.state["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=10_000)  # d = min(0.999, 10001/10010) = 0.999
    torch.testing.assert_close(ema.state["weight"], 0.999 * before + 0.001 * model.weight)


def test_no_weight_decay_on_gains_biases_skip_gains():
    model = normfree.create_model("nf_cifar_resnet20", width=0.25)
    decay, plain = param_groups(model, 5e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in plain["params"]}
    assert plain["weight_decay"] == 0.0 and decay["weight_decay"] == 5e-4
    assert all(n.endswith("weight") for n in decayed) and "fc.weight" in decayed
    assert {"fc.bias", "stem.conv.gain", "stem.conv.bias", "stages.0.0.skip_gain"} <= undecayed
    assert len(decayed) + len(undecayed) == len(names)


def _naive_pad_crop_flip(x, gen, pad):
    n, h, w, _ = x.shape
    oy, ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen), torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    xp = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    out = torch.stack([xp[i, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(n)])
    return torch.stack([o.flip(1) if f else o for o, f in zip(out, flip)])


def test_batched_pad_crop_flip_matches_per_image_loop():
    x = torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8)
    got = pad_crop_flip(x, step_generator(1, 2), pad=2)
    assert torch.equal(got, _naive_pad_crop_flip(x, step_generator(1, 2), 2))
    assert not torch.equal(got, x)


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0)])
def test_mix_batch_soft_targets(mixup, cutmix):
    x = torch.rand(8, 3, 8, 8)
    t = torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float()
    mx, mt = mix_batch(x, t, step_generator(3), mixup, cutmix)
    assert mx.shape == x.shape and torch.allclose(mt.sum(1), torch.ones(8))
    assert (mt.max(1).values < 1).any() or torch.equal(mx, x)


def test_npz_and_cifar_pickle_layouts(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8), y=np.arange(10) % 3)
    d = load_data(f"npz:{tmp_path}", "train", subset=4)
    assert len(d) == 4 and d.num_classes == 3 and d.x.dtype == torch.uint8
    with pytest.raises(NormfreeError, match="test.npz not found"):
        load_data(f"npz:{tmp_path}", "test")
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(cifar / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (2, 3072), dtype=np.uint8), "labels": [1, 9]}, f)
    train = load_data(f"cifar10:{tmp_path}", "train")
    assert train.x.shape == (10, 32, 32, 3) and train.y.tolist() == [1, 9] * 5


def test_demo_digits_dataset():
    pytest.importorskip("sklearn")
    train, test = load_data("demo", "train"), load_data("demo", "test")
    assert train.x.shape == (1500, 8, 8, 1) and len(test) == 297 and train.num_classes == 10


def test_config_yaml_roundtrip_and_unknown_keys(tmp_path):
    cfg = TrainConfig(model="bn_cifar_resnet20", lr=0.05, model_kwargs={"width": 2})
    cfg.save_yaml(tmp_path / "c.yaml")
    again = TrainConfig.from_yaml(tmp_path / "c.yaml", epochs=3)
    assert again.to_dict() == {**cfg.to_dict(), "epochs": 3}
    (tmp_path / "bad.yaml").write_text("lr: 0.1\nlearning_rate: 2\n")
    with pytest.raises(NormfreeError, match="learning_rate"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(NormfreeError, match=r"lr \(--lr\) = -1: must be a finite number > 0"):
        TrainConfig(lr=-1)


def test_checkpoint_refuses_non_finite_and_keeps_old_file(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"step": 1})
    with pytest.raises(NormfreeError, match="non-finite"):
        save_checkpoint(path, {"w": torch.tensor([1.0, float("inf")])}, {"step": 2})
    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]  # no temp files left
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(NormfreeError, match="junk.safetensors is not a safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_step_generator_streams_depend_on_every_key_and_its_position():
    draws = {keys: torch.rand(4, generator=step_generator(*keys)) for keys in
             [(0, 1, 2), (0, 2, 1), (1, 0, 2), (0, 1, 3), (0, 1)]}
    for a in draws:
        for b in draws:
            assert a == b or not torch.equal(draws[a], draws[b]), (a, b)
    assert torch.equal(torch.rand(4, generator=step_generator(0, 1, 2)), draws[(0, 1, 2)])  # reproducible


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mix_batch_targets_weigh_classes_by_their_share_of_the_image(mixup, cutmix):
    """Example i is a constant image of value i and class i: the mixed pixels and the soft target must agree."""
    n = 8
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    t = torch.eye(n)
    for seed in range(4):
        mx, mt = mix_batch(x, t, step_generator(seed), mixup, cutmix)
        assert torch.allclose(mt.sum(1), torch.ones(n))
        if cutmix:  # share of the pixels that still hold example i's own value
            own = (mx == x).float().mean(dim=(1, 2, 3))
            partner = mt.clone()
            partner[torch.arange(n), torch.arange(n)] = 0
            moved = partner.sum(1) > 0
            torch.testing.assert_close(mt[torch.arange(n), torch.arange(n)][moved], own[moved])
        else:  # every pixel is the target-weighted mean of the classes' values
            torch.testing.assert_close(mx[:, 0, 0, 0], mt @ torch.arange(n, dtype=torch.float32))
        assert (mt.max(1).values < 1).any()


def test_demo_train_and_test_splits_are_disjoint():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    train, test = load_data("demo", "train"), load_data("demo", "test")
    images = torch.from_numpy((load_digits().images * (255 / 16)).round()).to(torch.uint8)
    assert torch.equal(train.x[..., 0], images[:1500]) and torch.equal(test.x[..., 0], images[1500:])


def test_every_micro_batch_draws_its_own_random_stream(tmp_path, monkeypatch):
    """Augmentation, mixup and stochastic depth of each (step, micro-batch) come from a distinct generator."""
    import normfree.train.trainer as trainer_mod
    from normfree.train.trainer import Trainer

    keys = []
    real = trainer_mod.step_generator

    def spy(*k):
        keys.append(k)
        return real(*k)

    monkeypatch.setattr(trainer_mod, "step_generator", spy)
    cfg = TrainConfig(model="nf_cifar_resnet20", data="synthetic", out_dir=str(tmp_path / "run"), epochs=1,
                      model_kwargs={"width": 0.25}, train_subset=32, test_subset=16, batch_size=16, accum_steps=2,
                      seed=3)
    Trainer(cfg).fit()
    steps = [k for k in keys if len(k) == 3]  # (seed, step, micro-batch)
    assert sorted(steps) == [(3, s, j) for s in range(2) for j in range(2)]
