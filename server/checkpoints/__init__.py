"""Checkpoints: files, names, encoding, checks, the directory's health, durability."""
