"""Models: specs, networks, factories, losses, optimizers, hyperparameters, the graph view."""
