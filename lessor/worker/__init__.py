"""Inside a worker process: bootstrap, the client connection, and its pool handles."""
