"""Opening an embedded store that a killed writer left in the middle of a checkpoint.

LadybugDB 0.22 checkpoints (after every committed write transaction of ours) in steps: it takes
two lock files (``<db>.checkpoint.intent.lock``, ``<db>.checkpoint.apply.lock``), renames the
WAL to ``<db>.wal.checkpoint``, writes the changed pages to ``<db>.shadow``, logs a checkpoint
record, copies the shadow pages into the database file and removes those files. A kill between
the steps leaves some of them behind, and the next read-write ``Database()`` replays them; for
some states (a frozen WAL without its checkpoint record beside an empty shadow file, left by
kill -9 of a load) that replay segfaults, which no Python code can catch, and read-only opens
are refused ("checkpoint recovery is pending").

The same happens to a WAL holding a committed COPY that a kill kept from its checkpoint. So, only
when such files (or a WAL no live writer holds) are present, the open is first tried in a child
process; other opens stay as cheap as before. If the child completes it, the library has recovered the store. If the
child dies, or the library refuses the leftovers, they are moved (never deleted) into a dated
folder ``recovered-<time>/`` in the store directory and the open is tried again: the store is
back at its last completed checkpoint, and the transactions of the interrupted one are lost as
a whole (a prompt is whole or absent; running the load again writes it). Whatever was done is
printed on stderr and appended to ``recovery.log`` in the store directory. A file held by a live
process (a writer's lock, a checkpoint in progress) is never touched: that is ``StoreBusy``.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import subprocess
import sys
from pathlib import Path

from circuit_atlas.store.base import StoreBusy, StoreError

# What a checkpoint leaves beside the database file while it runs (the WAL itself is normal).
CHECKPOINT_FILES = (".wal.checkpoint", ".shadow", ".checkpoint.intent.lock", ".checkpoint.apply.lock")
LOG = "recovery.log"
BUSY = 75  # the child's exit status when a live process holds the database for writing
PROBE_TIMEOUT_S = 600

# The child: is a live writer or checkpointer holding a lock (F_GETLK for a read lock reports
# write locks only: readers do not count)? If not, open read-write, which replays the leftovers.
_PROBE = r"""
import fcntl, os, struct, sys
db = sys.argv[1]
def held(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0))
        return struct.unpack("hhqqi", got)[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)
if any(held(db + s) for s in ("", ".checkpoint.intent.lock", ".checkpoint.apply.lock")):
    sys.exit(75)
import ladybug
try:
    d = ladybug.Database(db)
    c = ladybug.Connection(d)
    c.execute("CALL show_tables() RETURN count(*)")
    c.close()
    d.close()
except Exception as exc:
    print(" ".join(str(exc).split()), file=sys.stderr)
    sys.exit(3)
"""


def leftovers(db: Path) -> list[Path]:
    """The checkpoint files present beside database file `db`."""
    return [p for p in (Path(f"{db}{s}") for s in CHECKPOINT_FILES) if p.exists()]


def _probe(db: Path) -> tuple[int, str]:
    """(exit status, last error line) of a child process that opens `db` read-write."""
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE, str(db)], capture_output=True, text=True,
                           timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return BUSY, "the trial open did not finish"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return r.returncode, (lines[-1] if lines else "")


def note(directory: Path | None, message: str) -> None:
    """Print `message` on stderr and append it, dated, to the store's recovery.log (an embedded
    store's directory; None for a server, whose log is its own)."""
    line = f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} {message}"
    print(f"circuit-atlas: {message}", file=sys.stderr)
    if directory is None:
        return
    try:
        with open(directory / LOG, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass  # a read-only directory: stderr is all there is


class _Lock:
    """An exclusive flock on `<store>/recovery.lock` while one process recovers (a no-op where
    the directory cannot be written: nothing can be recovered there anyway)."""

    def __init__(self, directory: Path) -> None:
        self.fd: int | None = None
        try:
            self.fd = os.open(directory / "recovery.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def _wal_left(db: Path) -> bool:
    try:
        return Path(f"{db}.wal").stat().st_size > 0
    except OSError:
        return False


def ensure_openable(db: Path, url: str) -> None:
    """Make database file `db` safe to open in this process (see the module's docstring)."""
    if not leftovers(db) and not _wal_left(db):
        return
    directory = db.parent
    lock = _Lock(directory)
    try:
        found = leftovers(db)
        wal = _wal_left(db)
        if not found and not wal:
            return  # another process recovered it while we waited for the lock
        rc, msg = _probe(db)
        if rc == 0:
            if not leftovers(db) and not _wal_left(db):
                what = ", ".join(p.name for p in found) if found else "its WAL"
                note(directory, f"{url}: completed what an interrupted writer left ({what}); nothing was lost")
            return
        if (rc == BUSY or "lock" in msg.lower()) and not found:
            return  # a live writer's WAL: the library opens beside it
        if rc == BUSY or "lock" in msg.lower():
            raise StoreBusy(f"{url}: another process is writing the store (a checkpoint is in progress); "
                            "retry in a few seconds, once it has finished")
        if rc > 0 and not any(w in msg.lower() for w in ("checkpoint", "shadow", "wal")):
            raise StoreError(f"{url}: cannot open the embedded store ({msg})")
        why = f"the library crashed (signal {-rc})" if rc < 0 else f"the library refused it ({msg})"
        moved = _move_aside(db)
        rc2, msg2 = _probe(db)
        where = moved[0].parent if moved else directory
        if rc2 != 0:
            note(directory, f"{url}: opening it after an interrupted write failed: {why}; moved "
                            f"{', '.join(p.name for p in moved)} to {where}; it still does not open "
                            f"({msg2 or f'status {rc2}'})")
            raise StoreError(f"{url}: cannot open the store even after moving an interrupted write's files "
                             f"to {where} ({msg2 or f'status {rc2}'}); see {directory / LOG}")
        note(directory, f"{url}: recovered from an interrupted write: {why}; moved "
                        f"{', '.join(p.name for p in moved)} to {where} (kept, not deleted). The store is "
                        "back at its last completed checkpoint: graphs of the interrupted write are absent "
                        "(run that write again)")
    finally:
        lock.release()


def _move_aside(db: Path) -> list[Path]:
    """Move the checkpoint files and the WAL (newer than a frozen one: replaying it alone would
    skip transactions) into a new dated folder; returns their new paths."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    folder = db.parent / f"recovered-{stamp}"
    n = 1
    while folder.exists():
        n += 1
        folder = db.parent / f"recovered-{stamp}-{n}"
    folder.mkdir()
    moved = []
    for suffix in (*CHECKPOINT_FILES, ".wal"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            dst = folder / src.name
            os.replace(src, dst)
            moved.append(dst)
    return moved
