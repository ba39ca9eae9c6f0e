"""Stores of a run: workdir layout, manifests, Lance schemas/writers/readers and stats."""
