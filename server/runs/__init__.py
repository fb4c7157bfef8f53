"""Runs: the registry of every principal's runs, one run's life, forks, principals."""
