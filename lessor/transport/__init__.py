"""Sockets between the runtime and its workers: the node, its peers, and spin-waiting."""
