"""The engine: models and transcoders in, attribution graphs out (engine → graph files → ingest).

Sub-packages, each one concept: ``models`` (Hugging Face LMs and their adapters), ``transcoders``,
``attribution`` (replacement model, graphs, pruning, head loadings), ``interventions``,
``training``, ``formats`` (the graph file formats ingest reads too) and ``cli``.

Before the sub-packages the engine was one flat folder; those module paths
(``circuit_atlas.engine.train``, ``...graph_files``, ...) still import, as aliases of the moved
modules (the same module objects), so code written against them keeps working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old flat module -> where it lives now (models, transcoders, attribution and interventions kept
# their names as packages that re-export the old module's names)
MOVED = {
    "adapters": "models.adapters",
    "gemmascope": "transcoders.gemmascope",
    "replacement": "attribution.replacement",
    "pruning": "attribution.pruning",
    "head_loadings": "attribution.head_loadings",
    "train": "training.train",
    "corpus": "training.corpus",
    "pinned_corpus": "training.pinned_corpus",
    "evaluate": "training.evaluate",
    "graph_files": "formats.graph_files",
    "neuronpedia": "formats.neuronpedia",
    "circuit_tracer_io": "formats.circuit_tracer",
    "attribute_cli": "cli.attribute",
    "heads_cli": "cli.heads",
    "intervene_cli": "cli.intervene",
    "train_cli": "cli.train",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old flat path as the moved module itself (not a copy: one module object)."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
        parent, _, name = fullname.rpartition(".")
        if parent == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return None  # a placeholder the import system makes; exec_module swaps in the real one

    def exec_module(self, module) -> None:  # noqa: ANN001
        real = importlib.import_module(f"{__name__}.{MOVED[module.__name__.rpartition('.')[2]]}")
        sys.modules[module.__name__] = real  # what `import` hands back, and binds on the package


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
