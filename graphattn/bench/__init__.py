"""Benchmarks that ship with graphattn: ``python -m graphattn.bench <suite>``.

Every figure is a median over repeats measured in this process, reported next to a peer
measured in the same run; compare ratios, not absolute times, across machines. On glibc, large
buffers are returned to the OS and re-faulted between repeats, which can move large-tensor times
by ~2x depending on ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_``: compare within one
environment only.
"""

from graphattn.bench._timing import Measurement, measure

__all__ = ["Measurement", "measure"]
