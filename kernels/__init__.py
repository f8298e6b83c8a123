"""Triton kernels of refmatch, installed as ``refmatch.kernels``."""
