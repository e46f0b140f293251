"""The local replacement model (frozen attention and norms, error nodes), attribution graphs
as exact linear effects, pruning by influence, and head loadings of an edge."""

# `circuit_atlas.engine.attribution` was one module before the sub-packages: its names stay importable here.
from circuit_atlas.engine.attribution.attribute import (  # noqa: F401
    AttributionError,
    CUSTOM_ID_BITS,
    CustomTarget,
    LogitTargets,
    RawGraph,
    TargetDiff,
    attribute,
    compute_graph,
    custom_target_id,
    graph_from_run,
    node_table,
)
