"""gradserve: a gRPC service that computes and applies PyTorch gradients.

The wire contract is proto/gradserve/v1/gradserve.proto (generated code in gradserve.v1);
gradserve.server holds the service, gradserve.client the Python client and trainer.
"""

__version__ = "0.1.0"
