"""Messages, their msgpack codec, and the frames that carry them between processes."""
