"""``dicomrelay loadtest``: two organisations on loopback, a synthetic or real
study set sent from one to the other, and the throughput, latency and cost of it.

``run`` orchestrates; ``worker`` is one side, run as its own process.
"""
