"""Datasets kept on the server: the per-run registry, uploads, named batches and passes."""
