"""A tiny real model for the training tests: `engine.models.loading.tiny_model("llama", ...)`."""

from __future__ import annotations


def tiny_lm(n_layers: int = 2, d_model: int = 32, vocab_size: int = 97, seed: int = 0):
    from circuit_atlas.engine.models.loading import tiny_model

    return tiny_model("llama", n_layers=n_layers, d_model=d_model, vocab_size=vocab_size, seed=seed)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def make_tiny_lm():
    """The `tiny_lm` factory as a fixture (test modules cannot import conftest under importlib mode)."""
    return tiny_lm
