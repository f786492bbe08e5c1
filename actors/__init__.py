"""pykka actors: thin shells that carry out what the pure cores decide."""

from lessor.actors.pool import PoolActor

__all__ = ["PoolActor"]
