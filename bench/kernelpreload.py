"""Imported by ``bench/kernelprocs.py``'s forkserver before it forks: numba and the compiled
kernels loaded once, their pages shared by every process it forks."""

from tracker.proof.formats import kernels

kernels.load()
kernels.warm_up()
