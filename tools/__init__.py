"""Tools around the model and the method: video I/O, metrics, comparison grids, reference checks,
benchmark helpers. Used by ``scripts/`` and the CLI; the model (``lvdm``) never imports them."""
