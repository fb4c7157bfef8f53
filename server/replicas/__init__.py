"""`gradserve-server --replicas N`: N server processes behind nginx, each run on one of them."""
