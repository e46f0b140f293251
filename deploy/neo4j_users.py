"""One-shot set-up of the Neo4j accounts circuit-atlas uses (run by docker-compose.yml's
`neo4j-users` service, or by hand): a reader for the app and, optionally, a writer for the
labels and supernodes saved from it.

As the admin (NEO4J_ADMIN_USER / NEO4J_ADMIN_PASSWORD) it creates NEO4J_READ_USER (and
NEO4J_WRITE_USER when NEO4J_WRITE_PASSWORD is set), or resets their passwords, and on Neo4j
Enterprise grants them the built-in `reader` and `architect` roles (architect: write data and
keep the schema's constraints, which a writer open checks). Neo4j Community has no roles: every
account there has full access, which this script says on its way out. Names and passwords reach
Cypher only as parameters.
"""

from __future__ import annotations

import os
import sys
import time


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        sys.exit(f"neo4j-users: error: {name} is not set")
    return value


def main() -> int:
    import neo4j
    from neo4j import exceptions as nex

    uri = os.environ.get("NEO4J_URI", "bolt://neo4j:7687")
    admin = (_env("NEO4J_ADMIN_USER", "neo4j"), _env("NEO4J_ADMIN_PASSWORD"))
    reader = (_env("NEO4J_READ_USER"), _env("NEO4J_READ_PASSWORD"))
    writer_password = os.environ.get("NEO4J_WRITE_PASSWORD", "")
    writer = (_env("NEO4J_WRITE_USER"), writer_password) if writer_password else None
    if writer and writer[0] == reader[0]:
        sys.exit("neo4j-users: error: NEO4J_WRITE_USER must differ from NEO4J_READ_USER")

    with neo4j.GraphDatabase.driver(uri, auth=admin) as driver:
        for attempt in range(30):  # the health check passed, but be patient with a slow start
            try:
                driver.verify_connectivity()
                break
            except (nex.ServiceUnavailable, OSError):
                time.sleep(2)
        else:
            sys.exit(f"neo4j-users: error: cannot reach {uri}")
        with driver.session(database="system") as session:
            edition = session.run("CALL dbms.components() YIELD edition RETURN edition").single()["edition"]
            accounts = [(reader, "reader")] + ([(writer, "architect")] if writer else [])
            for (name, password), role in accounts:
                session.run("CREATE USER $name IF NOT EXISTS SET PASSWORD $password CHANGE NOT REQUIRED",
                            name=name, password=password).consume()
                session.run("ALTER USER $name SET PASSWORD $password CHANGE NOT REQUIRED",
                            name=name, password=password).consume()
                if edition == "enterprise":
                    session.run(f"GRANT ROLE {role} TO $name", name=name).consume()  # role: one of two literals
                print(f"neo4j-users: account {name!r} ready" + (f" with role {role}" if edition == "enterprise" else ""))
    if edition != "enterprise":
        print(f"neo4j-users: warning: Neo4j {edition} edition has no roles, so {reader[0]!r} has full access "
              "like every account; the app still opens every read in READ access mode and refuses Cypher "
              "that writes, and refuses to write as the reader (NEO4J_READER_ONLY). For a database-enforced "
              "reader, run Neo4j Enterprise (NEO4J_IMAGE=neo4j:5-enterprise).")
    if not writer:
        print("neo4j-users: no NEO4J_WRITE_PASSWORD: no writer account; saving labels and supernodes in the app is disabled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
