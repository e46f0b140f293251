"""The read guard (store/cypher_guard.py): every statement the code reads with is accepted, and
obfuscated variants of every refused statement of issue 21 (and more) are refused, by the guard
alone and then through the real read paths (the embedded store opened for writing, so the
guard is all that stands in the way; the real ArcadeDB Bolt server, which ignores the driver's
READ access mode; the `circuit-atlas cypher` entry point), with the store and the file system
left as they were."""

from __future__ import annotations

import ast
import hashlib
import os
import random
import sys
from pathlib import Path

import pytest

from circuit_atlas.store import ReadOnlyViolation, cypher_guard, dialect, open_store
from circuit_atlas.store.synthetic import write_synthetic_corpus

ROOT = Path(__file__).resolve().parents[2]

# Statements that must never run on a read path. `{tmp}` is a folder of the test, so a leak
# shows as a file there. No spaces inside strings: variants replace spaces between tokens.
CORES = [
    "DETACH DELETE p",
    "DELETE p",
    "SET p.text = 'x'",
    "REMOVE p.text",
    "CREATE (n:Prompt {id: 'evil'})",
    "MERGE (n:Prompt {id: 'evil'})",
    "LOAD FROM '{secret}' (file_format='csv', header=false, delim=':') RETURN *",
    "LOAD WITH HEADERS (a STRING) FROM '{secret}' RETURN *",
    "CALL READ_CSV_SERIAL('{secret}') RETURN *",
    "CALL READ_PARQUET('{tmp}/x.parquet') RETURN *",
    "CALL READ_NPY('{tmp}/x.npy') RETURN *",
    "CHECKPOINT",
    "UNINSTALL json",
    "INSTALL json",
    "LOAD EXTENSION json",
    "LOAD json",
    "UPDATE httpfs",
    "CALL home_directory='{tmp}/home2'",
    "CALL threads=1",
    "COPY Prompt FROM '{tmp}/x.csv'",
    "COPY (MATCH (q:Prompt) RETURN q.id) TO '{tmp}/leak.csv'",
    "EXPORT DATABASE '{tmp}/export'",
    "IMPORT DATABASE '{tmp}/export'",
    "ATTACH '{tmp}/other' AS other (dbtype lbug)",
    "DETACH other",
    "USE other",
    "BEGIN TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "DROP TABLE Prompt",
    "ALTER TABLE Prompt ADD evil INT64",
    "CREATE MACRO evil(x) AS x",
    "CALL db.labels()",
    "CALL show_tables() RETURN *",
    "CALL { CREATE (n:Prompt {id: 'evil'}) }",
    "FOREACH (x IN [1] | CREATE (n:Prompt {id: 'evil'}))",
    "EXPLAIN MATCH (q) RETURN q",
    "PROFILE MATCH (q) RETURN q",
    "SHOW DATABASES",
    "RETURN read_csv('{secret}')",
    "RETURN `read_csv`('{secret}')",
    "RETURN apoc.load.json('file://{secret}')",
    "RETURN current_setting('home_directory')",
]
# Ways to put a core after something that reads. `{core}` is the statement, `{le}` a line end.
WRAPS = [
    "{core}",
    "RETURN 1;{sep}{core}",
    "RETURN 1 ;/* end */{sep}{core}",
    "MATCH (p:Prompt){sep}{core}",
    "MATCH (p:Prompt) //'{le}{core} //'",
    "MATCH (p:Prompt) //\"{le}{core} //\"",
    "MATCH (p:Prompt) //`{le}{core} //`",
    "UNWIND [1] AS x WITH x LIMIT 1{core}",
    "UNWIND [1] AS x WITH x LIMIT 0x1{core}",
    "WITH 1 AS x SKIP 1.{core}",
    "RETURN 'a\\\\' {core} //'",
    "RETURN 'a'' {core} //'",
    "RETURN 1 AS `a` {core}",
    "RETURN 1 AS `a\\` {core} //`",
    "RETURN 1 AS x UNION{sep}{core}",
    "RETURN 1 AS x UNION ALL{sep}{core}",
    "MATCH (p) WHERE EXISTS { {core} } RETURN p",
    "MATCH (p:Prompt) RETURN p /* a /* b */ {core} */",
    "RETURN '\\u0027 {core} //' AS s",
    "/* read */{sep}{core}",
]
LINE_ENDS = ["\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"]
SEPS = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u2003", "\u3000", "\u2028", "\x0b", "/**/", " /* x */ ",
        "//c\n", "//c\r\n", "//c\r", "//'\r", "//c\u2028", "//c\x85", "\n//c\n"]


def _fill(template: str, **values: str) -> str:
    """``template`` with each ``{name}`` replaced (Cypher's own braces stay as they are)."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def _mix_case(word: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)


def _obfuscate(core: str, rng: random.Random) -> str:
    """Case-mixed words and a random separator between tokens (strings keep their text)."""
    parts = core.split(" ")
    out = []
    for k, part in enumerate(parts):
        out.append(part if "'" in part else _mix_case(part, rng))
        if k + 1 < len(parts):
            out.append(rng.choice(SEPS))
    return "".join(out)


def variants(seed: int, n: int, fill: dict[str, str]) -> list[str]:
    """Every core in every wrap once (plain), then ``n`` seeded obfuscated ones."""
    rng = random.Random(seed)
    out = [_fill(w, core=_fill(c, **fill), sep=" ", le="\r") for c in CORES for w in WRAPS]
    for _ in range(n):
        core = _obfuscate(_fill(rng.choice(CORES), **fill), rng)
        out.append(_fill(rng.choice(WRAPS), core=core, sep=rng.choice(SEPS), le=rng.choice(LINE_ENDS)))
    return out


FILL = {"tmp": "/tmp/ca-guard", "secret": "/etc/passwd"}


# -- the guard alone --------------------------------------------------------------------------
def _module_statements() -> list[tuple[str, str]]:
    """Every Cypher string the code sends through a `read`: arguments of `.read(...)`/`read(...)`
    calls that are literals or module constants (app/, queries/, store/, ingest/, engine/,
    bench/), and module constants (or dicts of them) that start like a read, outside store/."""
    found = []
    for pkg in ("app", "queries", "store", "ingest", "engine", "bench"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(f.read_text())
            consts: dict[str, object] = {}
            for node in tree.body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        consts[node.targets[0].id] = ast.literal_eval(node.value)
                    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                        pass
            for name, value in consts.items() if pkg != "store" else ():  # store/ holds the writers' statements
                for text in value.values() if isinstance(value, dict) else [value]:
                    if isinstance(text, str) and text.lstrip().split(" ")[0].rstrip("\n") in ("MATCH", "OPTIONAL", "UNWIND", "WITH", "RETURN"):
                        found.append((f"{f.relative_to(ROOT)}:{name}", text))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and node.args):
                    continue
                fn = node.func
                if not ((isinstance(fn, ast.Attribute) and fn.attr == "read") or (isinstance(fn, ast.Name) and fn.id == "read")):
                    continue
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((f"{f.relative_to(ROOT)}:{node.lineno}", arg.value))
                elif isinstance(arg, ast.Name) and isinstance(consts.get(arg.id), str):
                    found.append((f"{f.relative_to(ROOT)}:{node.lineno}", consts[arg.id]))
    return found


def _built_statements() -> list[tuple[str, str]]:
    """Statements built at run time: the library queries' parts on each backend (HINT lines
    dropped for Bolt, as the runner does), the console's starters, export-csv's reads."""
    from circuit_atlas.queries.runner import list_queries
    from circuit_atlas.store import export_csv

    out = [(f"query {q.name}/{part}/{backend}", q.cypher_for(backend, part))
           for q in list_queries() for part in q.parts for backend in ("embedded", "bolt")]
    source = (ROOT / "app" / "pages" / "cypher_console.py").read_text()
    starters = ast.literal_eval(next(n.value for n in ast.parse(source).body
                                     if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "STARTERS"))
    out += [(f"console {k}", v) for k, v in starters.items()]
    for label, (key, _space, props) in export_csv.NODES.items():
        cols = ", ".join(f"n.`{p}` AS `{p}`" for p in props)
        out.append((f"export_csv {label}", f"MATCH (n:{label}) RETURN n.`{key}` AS `{key}`, {cols}"))
    out += [(f"export_csv {name}", spec[0]) for name, spec in export_csv.RELS.items()]
    return out


def test_every_statement_of_the_read_paths_is_accepted():
    statements = _module_statements() + _built_statements()
    assert len(statements) >= 150, len(statements)  # the collection found the code's reads
    refused = {where: str(cypher_guard.refusal(text)) for where, text in statements if cypher_guard.refusal(text)}
    assert not refused, refused


HARMLESS = [
    "RETURN 1 AS load",
    "RETURN 1 AS `DELETE`, 2 AS `a``b`",
    "MATCH (p:Prompt) // DELETE everything; CREATE more\nRETURN count(p) AS n",
    "MATCH (p:Prompt) // ' a quote in a comment\r\nRETURN count(p) AS n",
    "MATCH (p:Prompt) /* DETACH DELETE p; LOAD FROM '/etc/passwd' */ RETURN count(p) AS n",
    "MATCH (p:Prompt) WHERE p.text <> 'CREATE (x) DELETE; CALL x()' RETURN count(*) AS n",
    "MATCH (p:Prompt) WHERE p.text <> \"it's // not a comment\" RETURN count(*) AS n",
    "MATCH (p:Prompt) WHERE p.text <> 'a\\'b' RETURN count(*) AS n",
    "MATCH (p:Prompt) WHERE p.id = $set RETURN p.id AS merge",
    "MATCH (p:Prompt) RETURN p.id AS id ORDER BY id DESC SKIP 0 LIMIT 2;",
    "MATCH (p:Prompt) RETURN p.id AS id LIMIT 1; // the end",
    "UNWIND [1, 2] AS x WITH x LIMIT 1 RETURN x AS call",
    "RETURN {load: 1, set: 2} AS m",
    "RETURN 1.5e3 AS x, 0.25 AS y",
    "MATCH (p:Prompt) RETURN toUpper(p.id) AS id, size(p.text) AS n, coalesce(p.text, '') AS t LIMIT 1",
    "RETURN 1 AS x UNION ALL RETURN 2 AS x",
    "MATCH (p:Prompt)-[h:HAS]->(a:Active)\nHINT (p JOIN h) JOIN a\nRETURN count(*) AS n",  # LadybugDB only
]


@pytest.mark.parametrize("statement", HARMLESS)
def test_harmless_reads_with_keywords_in_names_comments_and_strings_are_accepted(statement):
    assert cypher_guard.refusal(statement) is None
    assert dialect.writes(statement) is None


def test_the_issue_statements_are_refused_naming_the_token_and_where():
    cases = {
        "MATCH (p:Prompt) //'\rDETACH DELETE p //'": ("DETACH", 1, 22),
        "UNWIND [1] AS x WITH x LIMIT 1LOAD FROM '/etc/passwd' (file_format='csv', header=false, delim=':') RETURN *": ("LOAD", 1, 31),
        "CALL READ_CSV_SERIAL('/etc/passwd') RETURN *": ("CALL", 1, 1),
        "RETURN 1;\n  CHECKPOINT": ("CHECKPOINT", 2, 3),
        "UNINSTALL json": ("UNINSTALL", 1, 1),
        "CALL home_directory='/tmp/x'; UPDATE httpfs": ("CALL", 1, 1),
        "RETURN 1; RETURN 2": ("RETURN", 1, 11),
        "MATCH (p) RETURN read_parquet('x')": ("read_parquet", 1, 18),
        "MATCH (n) RETURN n //\u2028' \n DETACH DELETE n //'": ("DETACH", 2, 2),
    }
    for statement, (token, line, column) in cases.items():
        r = cypher_guard.refusal(statement)
        assert r is not None, statement
        assert (r.token, r.line, r.column) == (token, line, column), (statement, str(r))
        assert "\n" not in str(r) and "\r" not in str(r)
        with pytest.raises(ReadOnlyViolation, match=f"'{token}' at line {line}, column {column}"):
            dialect.require_read(statement)
        assert dialect.writes(statement) == token.upper()


def test_several_hundred_obfuscated_variants_are_all_refused():
    fill = {"tmp": "/tmp/ca-guard", "secret": "/etc/passwd"}
    all_variants = variants(seed=21, n=600, fill=fill)
    assert len(all_variants) > 1000
    accepted = [v for v in all_variants if cypher_guard.refusal(v) is None]
    assert not accepted, accepted[:5]
    for v in all_variants[::7]:  # each refusal is one line
        assert len(str(cypher_guard.refusal(v)).splitlines()) == 1


@pytest.mark.parametrize("end", ["\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_a_comment_end_any_backend_may_see_cannot_hide_a_write(end):
    """Whichever character a backend takes as the end of a `//` comment, the write after it is
    refused; the same text ended by \\n is harmless (the write is inside a string)."""
    hidden = f"MATCH (p:Prompt) //'{end}DETACH DELETE p //'\nRETURN p"
    assert cypher_guard.refusal(hidden) is not None
    assert cypher_guard.refusal("MATCH (p:Prompt) //'\nRETURN p.id AS id, 'DETACH DELETE p //' AS s") is None


def test_character_level_refusals():
    for statement, reason in [
        ("RETURN 'unterminated", "unterminated string"),
        ("RETURN 1 AS `x", "unterminated backquoted name"),
        ("RETURN 1 /* open", "unterminated comment"),
        ("RETURN 1 \u200b AS x", "unexpected character U+200B"),
        ("RETURN 1 \u180e AS x", "unexpected character U+180E"),
        ("MATCH (n) \uff24\uff25\uff2c\uff25\uff34\uff25 n", "non-ASCII"),  # fullwidth DELETE
        ("RETURN 1 AS x UN\u0131ON MATCH (n) \u0131NSTALL json", "non-ASCII"),  # dotless i
        ("RETURN $ x", "a parameter needs a name"),
        ("RETURN 'a' 'b'", "two strings in a row"),
        ("", "empty statement"),
        ("   // only a comment\n", "empty statement"),
    ]:
        r = cypher_guard.refusal(statement)
        assert r is not None and reason in r.reason, (statement, r)


# -- the real read paths -------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (folders as '<dir>')."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _contents(store) -> tuple:
    prompts = store.read("MATCH (p:Prompt) RETURN p.id AS id, p.text AS text ORDER BY id")
    return store.stats(), prompts.to_dict(orient="records")


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A store loaded with two graphs, a HOME with LadybugDB's extension folder, a secret file."""
    home = tmp_path / "home"
    (home / ".lbdb" / "extension" / "json").mkdir(parents=True)
    (home / ".lbdb" / "extension" / "json" / "sentinel").write_text("installed")
    monkeypatch.setenv("HOME", str(home))
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the-secret-line:/root:/bin/bash\n")
    graphs = write_synthetic_corpus(tmp_path / "graphs", 2, n_nodes=40, n_edges=150)
    fill = {"tmp": str(tmp_path), "secret": str(secret)}
    return {"home": home, "secret": secret, "graphs": graphs, "fill": fill, "tmp": tmp_path}


def _answers_harmless(store, statements: list[str]) -> None:
    """Keywords in names, comments and strings: accepted by the store and answered."""
    n = int(store.read("MATCH (p:Prompt) RETURN count(p) AS n")["n"].iloc[0])
    first = store.read("MATCH (p:Prompt) RETURN p.id AS id ORDER BY id LIMIT 1")["id"].iloc[0]
    for statement in statements:
        frame = store.read(cypher_guard.without_terminator(statement), {"set": first} if "$set" in statement else None)
        assert len(frame) >= 1, statement
        if statement.rstrip().endswith("count(p) AS n"):
            assert int(frame["n"].iloc[0]) == n, statement
    assert store.read("RETURN 1 AS load")["load"].tolist() == [1]


def _representative(fill: dict[str, str]) -> list[str]:
    """Every core in its dangerous forms of the issue, plus seeded obfuscated variants."""
    out = []
    for core in CORES:
        c = _fill(core, **fill)
        out += [c, f"RETURN 1; {c}", f"MATCH (p:Prompt) //'\r{c} //'", f"UNWIND [1] AS x WITH x LIMIT 1{c}"]
    return out + variants(seed=2126, n=80, fill=fill)[-80:]


def test_embedded_read_paths_refuse_every_variant_and_change_nothing(world, capsys, monkeypatch):
    from circuit_atlas.cli import main

    tmp, fill = world["tmp"], world["fill"]
    url = f"embedded:{tmp / 'store'}"
    with open_store(url) as writer:
        writer.write_graphs(world["graphs"])
    statements = _representative(fill)
    before_home = _tree(world["home"])
    with open_store(url) as writer:  # a writer: the guard is the only thing in the way
        before = _contents(writer)
        for statement in statements:
            with pytest.raises(ReadOnlyViolation):
                writer.read(statement)
        assert _contents(writer) == before
    before_files = _tree(tmp / "store")  # (opening and closing a writer may rewrite its files)
    with open_store(url, read_only=True) as reader:
        for statement in statements[::3]:
            with pytest.raises(ReadOnlyViolation):
                reader.read(statement)
    for statement in statements[::4]:  # the entry point a user runs
        monkeypatch.setattr(sys, "argv", ["circuit-atlas", "cypher", "--store", url, statement])
        with pytest.raises(SystemExit) as exit_:
            main()
        out = capsys.readouterr()
        assert exit_.value.code == 2, statement
        assert len(out.err.strip().splitlines()) == 1 and "read-only" in out.err and "Traceback" not in out.err
        assert "the-secret-line" not in out.out + out.err
    assert _tree(tmp / "store") == before_files
    assert _tree(world["home"]) == before_home
    assert not any((tmp / name).exists() for name in ("leak.csv", "export", "other", "home2"))
    with open_store(url, read_only=True) as reader:  # the store still opens read-only (no pending checkpoint)
        assert _contents(reader) == before
        _answers_harmless(reader, HARMLESS)


def test_the_embedded_attacks_are_real_without_the_guard(world):
    """Control: sent straight to LadybugDB, the glued-digit LOAD reads the secret file and COPY
    writes one, so the checks above would notice a leak."""
    import ladybug

    tmp, fill = world["tmp"], world["fill"]
    (tmp / "raw").mkdir()
    conn = ladybug.Connection(ladybug.Database(str(tmp / "raw" / "db")))
    leak = f"UNWIND [1] AS x WITH x LIMIT 1LOAD FROM '{fill['secret']}' (file_format='csv', header=false, delim=':') RETURN *"
    assert "the-secret-line" in str(conn.execute(leak).get_as_df().values.tolist())
    conn.execute(f"COPY (RETURN 1 AS x) TO '{tmp}/leak.csv'")
    assert (tmp / "leak.csv").exists()
    assert cypher_guard.refusal(leak) is not None


@pytest.mark.bolt
def test_bolt_read_refuses_every_variant_and_changes_nothing(world, arcadedb, monkeypatch):
    import neo4j

    from circuit_atlas.cli import main

    monkeypatch.setenv("NEO4J_USER", arcadedb.user)
    monkeypatch.setenv("NEO4J_PASSWORD", arcadedb.password)
    monkeypatch.setenv("NEO4J_DATABASE", arcadedb.default_database)
    auth = (arcadedb.user, arcadedb.password)
    with neo4j.GraphDatabase.driver(arcadedb.url, auth=auth) as d, d.session(database=arcadedb.default_database) as s:
        s.run("MATCH (n) DETACH DELETE n").consume()
    with open_store(arcadedb.url) as store:
        store.write_graphs(world["graphs"][:1])
        before = _contents(store)
        assert before[1]
        for statement in _representative(world["fill"]):
            with pytest.raises(ReadOnlyViolation):
                store.read(statement)
        assert _contents(store) == before
        hidden = "MATCH (p:Prompt) //'\rDETACH DELETE p //'"
        monkeypatch.setattr(sys, "argv", ["circuit-atlas", "cypher", "--store", arcadedb.url, hidden])
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == 2
        assert store.read("MATCH (p:Prompt) RETURN p.id AS id, 'x' AS load // DELETE\r ORDER BY id")["id"].tolist() == [r["id"] for r in before[1]]
        _answers_harmless(store, [h for h in HARMLESS if "HINT" not in h])
        assert _contents(store) == before
    # Control: the server runs the hidden write in a READ session, so the guard is what stops it.
    with neo4j.GraphDatabase.driver(arcadedb.url, auth=auth) as d, \
            d.session(database=arcadedb.default_database, default_access_mode=neo4j.READ_ACCESS) as s:
        s.run("CREATE (:Probe {x: 1})").consume()
        s.run("MATCH (p:Probe) //'\rDETACH DELETE p //'").consume()
        assert s.run("MATCH (p:Probe) RETURN count(p) AS c").single()["c"] == 0
        s.run("MATCH (n) DETACH DELETE n").consume()
    assert not any((world["tmp"] / name).exists() for name in ("leak.csv", "export", "other", "home2"))
