"""gRPC peer for bench/peers.py: the proto and its generated modules (``python -m
bench.grpc_peer.generate`` rewrites them)."""
