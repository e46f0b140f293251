"""One unit of ingest work: attribute one prompt. Shared by every scale-out backend.

The job carries only small, picklable data (token ids, text, properties) so it can cross a
process or machine boundary; the result carries the finished GraphFile back to the driver,
which writes it to the graphs directory and loads it into the store. Workers therefore need
no shared filesystem and never touch the store.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from circuit_atlas.engine.formats import graph_files as gf
from circuit_atlas.errors import CircuitAtlasError


@dataclass(frozen=True)
class AttributionSettings:
    """The engine settings of a run; the identity ones go into every request key and graph id."""

    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    max_feature_nodes: int | None = None
    batch_size: int = 64
    max_memory: str | None = None  # the edge-row budget (``attribute(max_memory=...)``): not identity

    def identity(self) -> dict[str, Any]:
        """The settings as ``engine.attribution.attribute.attribute`` records them for ``request_key``
        (pruned, default logit targets)."""
        return {
            "node_threshold": float(self.node_threshold),
            "edge_threshold": float(self.edge_threshold),
            "max_feature_nodes": self.max_feature_nodes,
            "pruned": True,
            "logit_targets": None,
        }


def request_key(model_id: str, scan: str, token_ids: list[int], settings: AttributionSettings) -> str:
    """The prompt's request key (``graph_files.request_key``): known before attributing, so
    prompts already stored or already written as graph files are skipped without model work.
    (The graph id also hashes the graph's content, so it is known only afterwards.)"""
    return gf.request_key(model_id, scan, token_ids, settings.identity())


expected_graph_id = request_key  # the older name; it always meant "what a re-run can skip by"


@dataclass
class AttributionJob:
    index: int  # position in this run's work list
    row: int  # corpus row, for failure reports
    external_id: str | None
    text: str
    token_ids: list[int]
    request_key: str  # gf.request_key of this prompt and run (the graph id is known only after attributing)
    prompt_props: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobResult:
    job: AttributionJob
    graph: gf.GraphFile | None = None
    error: str | None = None
    seconds: float = 0.0


def _decode(lm: Any, token_id: int) -> str:
    return str(lm.tokenizer.decode([int(token_id)]))


def finish_graph(lm: Any, graph: gf.GraphFile, expected: str | None) -> gf.GraphFile:
    """Add what the store shows next to the graph: the text of every logit token
    (``meta.logit_tokens``), the model's top next token and whether it matches ``expected``
    (compared on stripped decoded text, so " Paris" == "Paris")."""
    nodes = graph.nodes
    logits = nodes[nodes["type"] == "logit"]
    logit_tokens = {str(int(t)): _decode(lm, int(t)) for t in logits["token_id"]}
    graph.meta["logit_tokens"] = logit_tokens
    props = graph.meta.setdefault("prompt_props", {})
    if len(logits) and logits["prob"].notna().any():
        top = int(logits.loc[logits["prob"].astype(float).idxmax(), "token_id"])
        props["top_token"] = logit_tokens[str(top)]
        if expected is not None:
            props["correct"] = props["top_token"].strip() == str(expected).strip()
    return graph


def run_job(lm: Any, tc: Any, job: AttributionJob, settings: AttributionSettings) -> JobResult:
    """Attribute one prompt and finish its graph; a failure becomes ``JobResult.error`` so one
    bad prompt never stops a corpus (the driver decides, e.g. under --fail-fast)."""
    from circuit_atlas.engine.attribution.attribute import attribute

    t0 = time.perf_counter()
    try:
        graph = attribute(
            lm,
            tc,
            job.text,
            max_feature_nodes=settings.max_feature_nodes,
            batch_size=settings.batch_size,
            max_memory=settings.max_memory,
            node_threshold=settings.node_threshold,
            edge_threshold=settings.edge_threshold,
            prune=True,
            prompt_props=dict(job.prompt_props),
        )
        graph = finish_graph(lm, graph, job.prompt_props.get("expected"))
    except CircuitAtlasError as exc:
        return JobResult(job, error=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # a long run must survive one prompt's failure; the reason is kept
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return JobResult(job, error=f"attribution failed: {tb}", seconds=time.perf_counter() - t0)
    return JobResult(job, graph=graph, seconds=time.perf_counter() - t0)
