"""One command reproduces every paper figure: ``surfacekit-reproduce`` (see docs/reproduce.md).

``entry`` defines what a reproduction is (plan, checks), ``entries`` holds the registry (one module
per reproduction), ``runner`` executes plans and checks, ``report`` writes DIR/index.html and
DIR/report.md, ``cli`` is the command.
"""

from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit

__all__ = ["Analysis", "Check", "Context", "Plan", "Reproduction", "Surfacekit"]
