"""Training-free consistency tricks that plug into the FIFO run (attention processors, step parts)."""
