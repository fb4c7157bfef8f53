"""`gradserve`: one command for a server's runs, checkpoints, datasets, digests and exports,
and for `gradserve serve` / `gradserve train` (docs/cli.md)."""
