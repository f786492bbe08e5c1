"""The handles callers use, the same class in-process and in workers."""
