"""RQ workers: job entry points (ids in, events out) and the training recipes they launch."""
