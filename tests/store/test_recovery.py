"""The states a kill leaves that make LadybugDB 0.22 segfault on open, made on purpose (a writer
with auto-checkpointing off, killed after committing a load; optionally its WAL frozen as a
checkpoint's): every command still opens the store, the leftovers are moved aside (kept) and
logged, the store is at its last checkpoint, and a re-run loads the rest. Files a live process
holds are never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from circuit_atlas.store import open_store
from circuit_atlas.store.base import StoreBusy
from circuit_atlas.store.synthetic import write_synthetic_corpus

DB = "atlas.lbdb"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuit_atlas", *args], capture_output=True, text=True, timeout=300)


def killed_after_commit(store: Path, graphs: list[Path]) -> None:
    """Load `graphs` in a child that commits without checkpointing, then dies of SIGKILL."""
    code = textwrap.dedent(f"""
        import os
        from circuit_atlas.store import open_store
        s = open_store({f"embedded:{store}"!r})
        s._defer_derived = 1
        s._exec("CALL auto_checkpoint=false")
        s.write_graphs({[str(g) for g in graphs]!r})
        os.kill(os.getpid(), 9)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-500:]
    assert (store / f"{DB}.wal").stat().st_size > 0


def crashes_on_open(store: Path) -> bool:
    r = subprocess.run([sys.executable, "-c", f"import ladybug; ladybug.Database({str(store / DB)!r})"],
                       capture_output=True, timeout=300)
    return r.returncode < 0


@pytest.mark.parametrize("frozen", [False, True], ids=["wal", "frozen-wal"])
def test_every_command_opens_what_a_kill_left(tmp_path, frozen):
    graphs = write_synthetic_corpus(tmp_path / "g", 3, n_nodes=120, n_edges=900)
    store = tmp_path / "store"
    url = f"embedded:{store}"
    with open_store(url) as s:
        s.write_graphs(graphs[:2])
    killed_after_commit(store, graphs[2:])
    if frozen:  # a checkpoint killed right after it froze the WAL
        os.replace(store / f"{DB}.wal", store / f"{DB}.wal.checkpoint")
        for suffix in (".shadow", ".checkpoint.intent.lock", ".checkpoint.apply.lock"):
            (store / f"{DB}{suffix}").touch()
    probe = tmp_path / "probe"  # the library itself on a copy: this state is one it dies on
    subprocess.run(["cp", "-r", str(store), str(probe)], check=True)
    assert crashes_on_open(probe)

    r = cli("store", "stats", "--json", "--store", url)  # a read-only command opens it
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Prompt"] == 2  # back at the last checkpoint: the killed load's graph absent
    assert "recovered from an interrupted write" in r.stderr
    log = (store / "recovery.log").read_text()
    assert "the library crashed (signal 11)" in log
    [folder] = list(store.glob("recovered-*"))
    kept = {p.name for p in folder.iterdir()}
    assert (f"{DB}.wal.checkpoint" if frozen else f"{DB}.wal") in kept
    assert not any(store.glob(f"{DB}.wal*")) and not any(store.glob(f"{DB}.checkpoint*"))
    r = cli("store", "load", *map(str, graphs), "--store", url)  # the re-run writes the rest
    assert r.returncode == 0, r.stderr
    with open_store(url, read_only=True) as s:
        assert len(s.prompt_ids()) == 3 and not s.derived_stale()


def test_files_a_live_process_holds_are_not_touched(tmp_path):
    graphs = write_synthetic_corpus(tmp_path / "g", 1, n_nodes=60, n_edges=200)
    store = tmp_path / "store"
    with open_store(f"embedded:{store}") as s:
        s.write_graphs(graphs)
    names = (".wal.checkpoint", ".shadow", ".checkpoint.intent.lock", ".checkpoint.apply.lock")
    for suffix in names:  # a checkpoint in progress in another process
        (store / f"{DB}{suffix}").write_bytes(b"x" if suffix == ".wal.checkpoint" else b"")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)",
         str(store / f"{DB}.checkpoint.intent.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match="retry"):
            open_store(f"embedded:{store}", read_only=True)
        assert all((store / f"{DB}{suffix}").exists() for suffix in names)
        assert not list(store.glob("recovered-*"))
    finally:
        holder.kill()
        holder.wait()
