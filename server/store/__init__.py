"""The parameter store: parameters, gradients, version and lock, and the collaborators it owns."""
