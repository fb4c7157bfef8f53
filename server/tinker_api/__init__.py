"""The Tinker REST API (the official `tinker` SDK's routes) over the same runs as gRPC.

Not named `tinker`: `python server/serve.py` puts server/ on sys.path, where a `tinker` folder
would shadow the SDK whose wire types this wing reads.
"""
