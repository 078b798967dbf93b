"""torchrun with 2 gloo processes on CPU: ranks stay in sync and match one process with the same global batch."""
import json
import os
import subprocess
import sys

import torch

from normfree.train.checkpoint import load_checkpoint
from normfree.train.config import TrainConfig
from normfree.train.trainer import Trainer

ARGS = {"model": "nf_cifar_resnet20", "data": "synthetic", "train_subset": 64, "test_subset": 32, "epochs": 1,
        "batch_size": 16, "lr": 0.05, "agc_clip": 0.01, "ema_decay": 0.9, "augment": False,
        "model_kwargs": {"width": 0.25, "stochdepth_rate": 0.0}}


def test_two_gloo_ranks_match_single_process(tmp_path):
    out = tmp_path / "ddp"
    flags = [f"--{k.replace('_', '-')}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in ARGS.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "normfree.cli", "train", *flags, f"--out-dir={out}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ddp_max_param_diff"] == 0.0  # ranks bit-identical

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(TrainConfig(**ARGS, out_dir=str(tmp_path / "single")))
        single.fit()
    finally:
        torch.set_num_threads(threads)
    ddp_state = load_checkpoint(out / "last.safetensors")[0]
    for name, p in single.model.state_dict().items():
        torch.testing.assert_close(ddp_state[f"model.{name}"], p, rtol=1e-4, atol=1e-6, msg=name)
    assert load_checkpoint(out / "last.safetensors")[1]["step"] == single.step == 4
