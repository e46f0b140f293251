"""Interventions on the real model (zero, scale, clamp features) and circuit validation
against matched controls."""

# `circuit_atlas.engine.interventions` was one module before the sub-packages: its names stay importable here.
from circuit_atlas.engine.interventions.ablation import (  # noqa: F401
    CircuitValidation,
    CleanRun,
    ERROR_NODE,
    Intervention,
    InterventionError,
    InterventionResult,
    MODES,
    clean_run,
    intervene,
    intervened_logits,
    parse_feature_key,
    parse_intervention,
    prompts_from_store,
    validate_circuit,
)
