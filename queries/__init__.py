"""The Cypher library for finding recurring circuits across prompts, and its runner."""
