"""Where work comes in: the watch daemon's event sources and the queue they feed."""
