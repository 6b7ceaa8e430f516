"""The command line behind ``videocrafter_main.py``, one module per job.

``parser`` (flags) → ``request`` (every input checked into a :class:`~cli.request.RunRequest`) →
``distributed`` (the torchrun process group, agreeing on errors) → ``dry_run`` (``--dry_run``: the
plan and its memory advice) or ``run`` (the videos, signal handling) ; ``main`` ties them together.
"""

# The logger every CLI module writes to: users' logs (and their filters) have always shown it
# under the entry point's name.
LOGGER_NAME = "videocrafter_main"
