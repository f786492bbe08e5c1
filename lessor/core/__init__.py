"""Pure state machines: no threads, no I/O, time passed in as ``now``."""
