"""The RPC wing: the servicer, its per-group handlers, interceptors, auth, stream admission, reflection."""
