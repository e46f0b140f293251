"""Training from the pinned corpus reproduces: the same seed gives the same transcoders in another
process with another thread count and hash seed (within float tolerance); another seed does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from circuit_atlas.engine.training.train import TrainConfig, train_transcoders

SCRIPT = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from circuit_atlas.engine.models.loading import tiny_model
from circuit_atlas.engine.training.train import TrainConfig, train_transcoders
lm = tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
train_transcoders(TrainConfig(**json.loads(sys.argv[1])), lm=lm)
"""


def _settings(out: Path, seed: int, matmul_dtype: str = "float32") -> dict:
    return dict(model="tiny", kind="plt", features=48, activation="topk", k=4, corpus="default", tokens=1500,
                out=str(out), batch_size=8, seq_len=24, lr=3e-3, skip=True, progress=False, seed=seed,
                checkpoint_every=50, norm_batches=2, matmul_dtype=matmul_dtype)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        got.update({f"{f.name}/{k}": v for k, v in load_file(f).items()})
    return got


def _train_in_subprocess(settings: dict, threads: int, hash_seed: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(settings), str(threads)], check=True, env=env, timeout=600)


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])  # bfloat16: the demo recipe's matmuls
def test_same_seed_same_transcoders_other_seed_not(make_tiny_lm, tmp_path: Path, matmul_dtype: str) -> None:
    lm = make_tiny_lm(n_layers=2, d_model=32, vocab_size=97, seed=0)
    a = train_transcoders(TrainConfig(**_settings(tmp_path / "a", 0, matmul_dtype)), lm=lm)
    _train_in_subprocess(_settings(tmp_path / "b", 0, matmul_dtype), threads=1, hash_seed="123")
    c = train_transcoders(TrainConfig(**_settings(tmp_path / "c", 1, matmul_dtype)), lm=lm)
    wa, wb, wc = _weights(a), _weights(tmp_path / "b"), _weights(c)
    assert wa.keys() == wb.keys() == wc.keys() and any("W_skip" in k for k in wa)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), k
    # another seed: other initialisation, other sample of the corpus, other batches
    assert max((wa[k] - wc[k]).abs().max().item() for k in wa if "W_enc" in k) > 1e-2
    la = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) and all(abs(x - y) <= 1e-4 * max(1.0, abs(x)) for x, y in zip(la, lb))
