"""The model and transcoders that the app's pages run (Intervene, head loadings on the prompt
graph, circuit validation): found and cached in one place, so every page loads them once and
says the same thing when there are none.

Where they come from, in order: objects in ``st.session_state`` (``intervene_lm`` /
``intervene_tc``: how tests and pages hand them over), the environment
(``CIRCUIT_ATLAS_MODEL`` / ``CIRCUIT_ATLAS_TRANSCODERS``, set by ``circuit-atlas app --model M
--transcoders T``), or, on request, a prompt's stored ``model`` and ``scan`` when the scan
names a transcoder directory on this machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

MODEL_ENV = "CIRCUIT_ATLAS_MODEL"
TRANSCODERS_ENV = "CIRCUIT_ATLAS_TRANSCODERS"
NOT_CONFIGURED = ("no model and transcoders are configured: start the app with `circuit-atlas app --model M "
                  "--transcoders T` (or set CIRCUIT_ATLAS_MODEL, a model directory, GGUF file, hub id or `demo`, and "
                  "CIRCUIT_ATLAS_TRANSCODERS, a transcoder directory, and restart it)")


@st.cache_resource(show_spinner="Loading the model…")
def _load_model(ref: str) -> Any:
    from circuit_atlas.engine.models.loading import load_model

    return load_model(ref)


@st.cache_resource(show_spinner="Loading the transcoders…")
def _load_transcoders(ref: str) -> Any:
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    return load_transcoders(ref)


def configured() -> tuple[str, str] | None:
    """The (model, transcoders) references of the environment, if both are set."""
    model_ref, tc_ref = os.environ.get(MODEL_ENV), os.environ.get(TRANSCODERS_ENV)
    return (model_ref, tc_ref) if model_ref and tc_ref else None


def model_and_transcoders(prompt: Any = None, key: str = "models") -> tuple[Any, Any] | str:
    """(model, transcoders), or one sentence saying why there are none. With a ``prompt`` (a
    row with ``model`` and ``scan``) and nothing configured, offers a button that loads the
    prompt's own model and transcoder directory (``key`` names the button)."""
    lm, tc = st.session_state.get("intervene_lm"), st.session_state.get("intervene_tc")
    if lm is not None and tc is not None:
        return lm, tc
    refs = configured()
    if refs is None and prompt is not None:
        meta_model, meta_scan = str(prompt["model"] or ""), str(prompt["scan"] or "")
        if meta_model and meta_scan and Path(meta_scan).expanduser().is_dir():
            if st.button(f"Load model `{meta_model}` and transcoders `{meta_scan}` (from the prompt's metadata)",
                         key=f"{key}_load_meta"):
                st.session_state["models_meta_refs"] = (meta_model, meta_scan)
        refs = st.session_state.get("models_meta_refs")
    if refs is None:
        return NOT_CONFIGURED
    model_ref, tc_ref = refs
    try:
        return _load_model(model_ref), _load_transcoders(tc_ref)
    except Exception as exc:  # missing files, offline hub, bad config: all the user's to fix
        return f"could not load model `{model_ref}` / transcoders `{tc_ref}`: {exc}"


def validate_panel(sets: dict[str, list[str]], group: str | dict[str, str], key: str, what: str) -> None:
    """One click to validate a set of features (pinned, a supernode, a search row; ``sets``
    names the candidates, a picker shows when there are several) against matched controls on a
    group's prompts: the library's validate_circuit, shown as the same table and summary line as
    `circuit-atlas validate-circuit`. The last result stays on screen. ``group`` is the default
    group, or one per set (a search row's own prompts' group)."""
    from circuit_atlas.app import data

    with st.expander(f"Validate {what} against matched controls"):
        if not sets:
            st.caption("Nothing to validate yet.")
            return
        names = list(sets)
        name = names[0] if len(names) == 1 else st.selectbox("Features", names, key=f"{key}_set")
        keys = list(dict.fromkeys(sets[name]))
        if not keys:
            st.caption("No features to validate (embeddings, errors and logits are not features).")
            return
        st.caption(f"{len(keys)} features: " + ", ".join(f"`{k}`" for k in keys))
        groups = sorted({str(g) for g in data.require_prompts()["grp"].dropna()})
        if not groups:
            st.caption("No prompt in the store has a group to validate on.")
            return
        c1, c2, c3, c4 = st.columns(4)
        default = group.get(name, "") if isinstance(group, dict) else group
        grp = c1.selectbox("On the prompts of group", groups, index=groups.index(default) if default in groups else 0,
                           key=f"{key}_group_{name}" if isinstance(group, dict) else f"{key}_group")
        mode = c2.selectbox("Mode", ["zero", "flip"], key=f"{key}_mode", help="zero: ablate; flip: multiply by -1")
        controls = int(c3.number_input("Control sets", 0, 50, 5, key=f"{key}_controls"))
        positions = c4.selectbox("Positions", ["all", "active"], key=f"{key}_positions")
        if st.button("Validate", key=f"{key}_run", type="primary"):
            st.session_state[f"{key}_result"] = _validate(keys, grp, mode, controls, positions)
        shown = st.session_state.get(f"{key}_result")
        if shown is None:
            return
        if isinstance(shown, str):
            st.error(shown)
            return
        table, summary, title = shown
        st.markdown(f"**{title}**")
        st.dataframe(table, hide_index=True, key=f"{key}_table")
        st.caption(summary)


def _validate(keys: list[str], group: str, mode: str, controls: int, positions: str) -> tuple | str:
    """(table, summary line, title) of validate_circuit on the group's prompts, or the error."""
    from circuit_atlas.app import data
    from circuit_atlas.engine.cli.intervene import validation_summary, validation_table
    from circuit_atlas.engine.interventions.ablation import prompts_from_store, validate_circuit
    from circuit_atlas.errors import CircuitAtlasError

    loaded = model_and_transcoders()
    if isinstance(loaded, str):
        return f"Validation needs the model and transcoders on this machine: {loaded}."
    lm, tc = loaded
    try:
        prompts = prompts_from_store(data.get_store(), group)
        with st.spinner(f"Validating on {len(prompts)} prompts…"):
            result = validate_circuit(lm, tc, prompts, keys, mode=mode, controls=controls, seed=0, positions=positions)
    except CircuitAtlasError as exc:
        return f"Cannot validate: {exc}"
    return (validation_table(result, len(keys)), validation_summary(result.summary),
            f"validate-circuit: {mode} {len(keys)} features on group {group!r}")


__all__ = ["MODEL_ENV", "NOT_CONFIGURED", "TRANSCODERS_ENV", "configured", "model_and_transcoders", "validate_panel"]
