"""`circuit-atlas supernodes`: propose automatic supernodes from the whole store."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    """Add the supernodes command to the main CLI."""

    @app.command("supernodes")
    def supernodes(
        scan: Optional[str] = typer.Option(None, "--scan", help="Transcoder set whose features to group; default: the only scan in the store."),
        store_url: Optional[str] = typer.Option(None, "--store", help="Store URL (embedded:PATH | bolt://... | neo4j://...); default CIRCUIT_ATLAS_STORE or the embedded default."),
        min_prompts: int = typer.Option(2, "--min-prompts", help="Only features active in at least this many prompts."),
        resolution: float = typer.Option(1.0, "--resolution", help="Louvain resolution: higher gives smaller groups."),
        min_similarity: float = typer.Option(0.25, "--min-similarity", help="Drop similarity edges below this (0-1)."),
        min_size: int = typer.Option(2, "--min-size", help="Smallest group written as a supernode."),
        seed: int = typer.Option(0, "--seed", help="Seed of the community detection."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the proposal without writing it."),
    ) -> None:
        """Group features that co-occur across prompts, push the same targets with the same sign
        and have similar logit effects; write them as (:Supernode {method:'auto'})."""
        from circuit_atlas.queries.supernodes import SupernodeError, SupernodeSettings, propose_supernodes, write_auto_supernodes
        from circuit_atlas.store import open_store

        settings = SupernodeSettings(min_prompts=min_prompts, resolution=resolution, min_similarity=min_similarity, min_size=min_size, seed=seed)
        with open_store(store_url) as store:
            if scan is None:
                scans = store.read("MATCH (f:Feature) RETURN DISTINCT f.scan AS scan")["scan"].dropna().tolist()
                if len(scans) != 1:
                    raise SupernodeError(f"the store holds {len(scans)} scans {scans[:5]}; name one with --scan")
                scan = scans[0]
            groups = propose_supernodes(store, scan, settings) if dry_run else write_auto_supernodes(store, scan, settings)
        table = Table(title=f"{len(groups)} automatic supernodes for scan {scan}" + (" (dry run, not written)" if dry_run else ""))
        for col in ("label", "members", "score", "key"):
            table.add_column(col)
        for g in groups:
            members = ", ".join(g["members"][:6]) + (" ..." if len(g["members"]) > 6 else "")
            table.add_row(g["label"], f"{len(g['members'])}: {members}", f"{g['score']:.3f}", g["key"])
        Console().print(table)
