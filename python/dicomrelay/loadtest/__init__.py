"""``dicomrelay loadtest``: two organisations on loopback, a synthetic or real
study set sent from one to the other, and the throughput, latency and cost of it.

``run`` orchestrates; ``worker`` is one side, run as its own process.
"""

# About twenty seconds of each profile at the rates this engine sustains on two cores.
DEFAULT_COUNTS = {"ct": 10_000, "mr": 20_000, "cr": 800, "mixed": 6_000}
