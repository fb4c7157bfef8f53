"""The gradserve server: the parameter store, its gRPC servicer and the process around them."""
