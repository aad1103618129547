"""``dicomrelay loadtest``: two organisations on loopback, a synthetic or real
study set sent from one to the other, and the throughput, latency and cost of it.

``plan`` sizes the run, ``run`` orchestrates; ``worker`` is one side, run as
its own process.
"""

PROFILE_NAMES = ("ct", "mr", "cr", "dx", "us", "small", "mixed")

# Temporary files a default run may write: each image is there twice (the
# source study and the receiver's stored copy).
DISK_BUDGET = 2_000_000_000
