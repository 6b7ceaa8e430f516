"""The low-level services every layer above may use: video writing and reading (``video_io``),
memory measurement (``memory``) and ``--help`` formatting (``cli_help``). Nothing here imports
the model (``lvdm``), the method (``fifo``), the CLI (``cli``) or the tools (``tools``)."""
