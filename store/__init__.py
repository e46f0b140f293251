"""Graph stores: the embedded default (LadybugDB) and Neo4j over Bolt, behind one interface."""
