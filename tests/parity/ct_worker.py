"""circuit-tracer's side of the parity tests, run by the python of circuit-tracer's own venv.

``python ct_worker.py cases.json`` attributes every case in one process (the imports cost more
than a tiny case) with circuit-tracer 0.5.0's nnsight backend on the saved model and
transcoders, and writes for each case ``<out>.pt`` (``Graph.to_pt``, what ``circuit-atlas
import`` reads) and ``<out>.extra.pt`` (circuit-tracer's own pruning masks, node influence and
both scores). Prints one JSON line per case: ``{"name", "ok"}`` or ``{"name", "error"}``.
Nothing of ours is imported here: the two sides share only files.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def _tokenizer(model_dir: Path):
    """The saved tokenizer under transformers 4.x (files written by transformers 5 may name a
    class 4.x lacks: then the fast tokenizer from tokenizer.json)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (ValueError, OSError, AttributeError, TypeError):
        conf = json.loads((model_dir / "tokenizer_config.json").read_text())
        special = {k: conf[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if isinstance(conf.get(k), str)}
        return PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), **special)


def _transcoders(case: dict, torch):
    tc_dir = Path(case["tc_dir"])
    hooks = dict(feature_input_hook=case["input_hook"], feature_output_hook=case["output_hook"])
    cpu = torch.device("cpu")
    if case["kind"] == "plt":
        from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

        paths = {i: str(tc_dir / f"layer_{i}.safetensors") for i in range(case["n_layers"])}
        tcs = load_transcoder_set(paths, scan=case["scan"], device=cpu, dtype=torch.float32,
                                  lazy_encoder=False, lazy_decoder=False, **hooks)
        if case.get("topk"):  # 0.5.0 has the TopK module but no loader that sets it
            from circuit_tracer.transcoder.activation_functions import TopK

            for t in tcs.transcoders:
                t.activation_function = TopK(int(case["topk"]))
        return tcs
    from safetensors.torch import load_file

    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    clt = load_clt(str(tc_dir), scan=case["scan"], device=cpu, dtype=torch.float32, lazy_decoder=False, lazy_encoder=False, **hooks)
    first = load_file(str(tc_dir / "W_enc_0.safetensors"))
    if "W_skip_0" in first:
        # 0.5.0's CLT loader does not read skip weights from files: set them. Our files keep
        # W_skip_{i} as (d_out, d_in), like a PLT's W_skip (skip = x @ W.T); circuit-tracer's CLT
        # computes x @ W_skip[i], so it gets the transpose.
        w = torch.stack([load_file(str(tc_dir / f"W_enc_{i}.safetensors"))[f"W_skip_{i}"].T for i in range(case["n_layers"])])
        clt.W_skip = torch.nn.Parameter(w.to(torch.float32))
        clt.skip_connection = True
    return clt


def run_case(case: dict) -> None:
    import torch
    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.graph import compute_graph_scores, compute_node_influence, prune_graph
    from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel
    from transformers import AutoModelForCausalLM

    model_dir = Path(case["model_dir"])
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    hf.eval()
    model = NNSightReplacementModel(hf, tokenizer=_tokenizer(model_dir), dispatch=True)
    model._hf_config = hf.config  # as its from_config does (nnsight may hide .config)
    model._configure_replacement_model(_transcoders(case, torch))
    scale = getattr(hf.get_input_embeddings(), "embed_scale", None)
    if scale is not None:
        # Gemma 3 scales embeddings inside its embedding module (by sqrt(d_model)); 0.5.0 takes
        # the embedding nodes' vectors from the unscaled weight rows while reading the gradient
        # at that module's (scaled) output, so its embedding edges come out sqrt(d_model) too
        # small. Give it the vectors the module really outputs, so the rest can be compared.
        model.embed_weight = model.embed_weight * scale.to(model.embed_weight.dtype)
    ids = torch.tensor(case["ids"])
    kwargs = {}
    if case.get("targets") is not None:
        kwargs["attribution_targets"] = case["targets"]
    graph = attribute(ids, model, batch_size=case["batch"], max_feature_nodes=case.get("max_feat"), **kwargs)
    out = Path(case["out"])  # its suffix is replaced (give one when the name holds dots)
    graph.to_pt(str(out.with_suffix(".pt")))
    res = prune_graph(graph, 0.8, 0.98)
    replacement, completeness = compute_graph_scores(graph)
    n_logits = len(graph.logit_targets)
    weights = torch.zeros(graph.adjacency_matrix.shape[0])
    weights[-n_logits:] = graph.logit_probabilities.float().cpu()
    influence = compute_node_influence(graph.adjacency_matrix, weights)
    # prune_graph's edge scores (its first node mask, its pruned matrix), for telling an edge set
    # difference at the 98% cumulative boundary (float rounding) from a real one
    from circuit_tracer.graph import compute_edge_influence, find_threshold

    keep = influence >= find_threshold(influence, 0.8)
    keep[-n_logits - len(graph.input_tokens):] = True
    pruned = graph.adjacency_matrix.clone()
    pruned[~keep] = 0
    pruned[:, ~keep] = 0
    edge_scores = compute_edge_influence(pruned, weights)
    torch.save(
        {
            "node_mask": res.node_mask.cpu(),
            "edge_mask": res.edge_mask.cpu(),
            "influence": influence.cpu(),
            "edge_scores": edge_scores.cpu(),
            "replacement_score": float(replacement),
            "completeness_score": float(completeness),
        },
        str(out.with_suffix(".extra.pt")),
    )


def main() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("CT_THREADS", "2")))
    cases = json.loads(Path(sys.argv[1]).read_text())
    for case in cases:
        try:
            run_case(case)
            print(json.dumps({"name": case["name"], "ok": True}), flush=True)
        except Exception as exc:  # noqa: BLE001 - reported per case, the others still run
            tb = traceback.format_exc().strip().splitlines()[-6:]
            print(json.dumps({"name": case["name"], "error": f"{type(exc).__name__}: {exc}", "trace": tb}), flush=True)


if __name__ == "__main__":
    main()
