"""The gradserve Python client: GradientClient over the gradserve.v1 stub, and the trainer."""
