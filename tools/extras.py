"""Optional packages: which ones a command needs, and the one line that says how to install them.

Generation needs only the package's core dependencies. Evaluation needs the ``eval`` extra
(``pyproject.toml``); a command that needs it checks before it starts, so that a missing package
is one line of advice instead of an import error halfway through a run.
"""

from __future__ import annotations

from importlib.util import find_spec

# Import name of each package of the eval extra (pyproject.toml's [project.optional-dependencies]).
EVAL_MODULES = ("timm", "pyiqa", "scenedetect", "matplotlib")
EVAL_INSTALL = "pip install -c constraints.txt -e '.[eval]'"


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The names among ``modules`` that cannot be imported (none is imported here)."""
    return [name for name in modules if find_spec(name) is None]


def eval_extra_problem() -> str | None:
    """None when the eval extra is installed, else one line naming what is missing and the fix."""
    missing = missing_modules(EVAL_MODULES)
    if not missing:
        return None
    return f"evaluation needs the 'eval' extra ({', '.join(missing)} not installed): {EVAL_INSTALL}"
