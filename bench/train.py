"""Training throughput on the demo model: activation collection and a transcoder training step.

Measures tokens/s of (1) activation collection (one forward pass recording every layer's MLP
input/output) with the model in float32 and in bfloat16, printed with the bf16/fp32 ratio, and
(2) a training step of the demo recipe's transcoders (PLT, 512 features/layer, TopK 16, all 30
layers) on those activations, with fp32 and with bf16 matmuls (`matmul_dtype`), printed with their ratio. The machine may be shared: the load average before and after is
printed with the figures so they can be read honestly. Ends with one JSON line of all figures.

    python bench/train.py [--batches 3] [--batch-size 8] [--seq-len 64] [--features 512]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def _rate(fn, n: int, tokens_per_call: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n * tokens_per_call / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=3, help="timed calls per measurement")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--model", default="demo")
    args = ap.parse_args()

    from circuit_atlas.engine.training.corpus import default_corpus
    from circuit_atlas.engine.models.loading import load_model
    from circuit_atlas.engine.training.train import TrainConfig, TranscoderTrainer, _bos_prefix, token_stream, token_windows

    load_before = os.getloadavg()[0]
    figures: dict[str, float | int | str] = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count() or 0}
    texts = default_corpus(50_000, seed=0)  # the pinned corpus: the same text on every machine
    acts = None
    for dtype in ("float32", "bfloat16"):
        lm = load_model(args.model, dtype=dtype)
        wins = token_windows(token_stream(lm, texts, progress=False), _bos_prefix(lm), args.seq_len)
        ids = torch.from_numpy(wins[: args.batch_size]).to(lm.device)
        n_tok = args.batch_size * (args.seq_len - 1)  # trained positions (BOS excluded)
        rate = _rate(lambda: lm.mlp_io(ids), args.batches, n_tok)
        figures[f"collect_tokens_per_s_{'fp32' if dtype == 'float32' else 'bf16'}"] = round(rate, 1)
        print(f"activation collection {dtype:>9}: {rate:8.1f} tokens/s")
        if dtype == "float32":
            ins, outs = lm.mlp_io(ids)
            acts = (torch.stack([t[:, 1:].reshape(-1, t.shape[-1]) for t in ins]).float(),
                    torch.stack([t[:, 1:].reshape(-1, t.shape[-1]) for t in outs]).float())
            n_layers, d_model = lm.n_layers, lm.d_model
        del lm
    ratio = figures["collect_tokens_per_s_bf16"] / figures["collect_tokens_per_s_fp32"]
    print(f"bf16 / fp32 collection speed: {ratio:.2f}x")

    xs, ys = acts
    train_rates: dict[str, float] = {}
    for mm in ("float32", "bfloat16"):  # the transcoders' matmul dtype (TrainConfig.matmul_dtype)
        cfg = TrainConfig(features=args.features, activation="topk", k=args.k, tokens=10**9, matmul_dtype=mm)
        trainer = TranscoderTrainer(n_layers, d_model, cfg)
        trainer.norm.estimate(xs, ys)
        opt = torch.optim.Adam(trainer.parameters(), lr=1e-3)
        batch = trainer.prepare(xs, ys)  # once per batch, as the training loop does

        def step() -> None:
            res = trainer.losses(xs, ys, 0, batch)
            opt.zero_grad(set_to_none=True)
            res["loss"].backward()
            opt.step()

        train_rates[mm] = _rate(step, args.batches, xs.shape[1])
        print(f"training step (PLT {args.features}/layer x {n_layers} layers, TopK {args.k}, {mm} matmuls): "
              f"{train_rates[mm]:8.1f} tokens/s")
    train_rate = train_rates["bfloat16"]
    print(f"bf16 / fp32 training-step speed: {train_rate / train_rates['float32']:.2f}x")
    collect = figures["collect_tokens_per_s_bf16"]
    pipeline = 1 / (1 / collect + 1 / train_rate)
    print(f"pipeline (bf16 collection + one bf16-matmul training step): {pipeline:8.1f} tokens/s")
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} cores")
    figures.update(
        collect_tokens_per_s=collect,
        train_tokens_per_s=round(train_rate, 1),
        train_tokens_per_s_fp32_matmul=round(train_rates["float32"], 1),
        train_bf16_over_fp32=round(train_rate / train_rates["float32"], 2),
        pipeline_tokens_per_s=round(pipeline, 1),
        bf16_over_fp32=round(ratio, 2),
        load_before=round(load_before, 2),
        load_after=round(load_after, 2),
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        features=args.features,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
