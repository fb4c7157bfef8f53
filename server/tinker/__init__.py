"""The Tinker REST API (the official `tinker` SDK's routes) over the same runs as gRPC."""
