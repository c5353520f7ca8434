"""mmevol: evolve multimodal instruction data with the MMEvol method.

The package maps the project's top-level folders: ``mmevol.graph`` (state, wiring, the
runner, persistence, the runtime given to nodes and the tools built on a run),
``mmevol.nodes`` (what happens to one sample), ``mmevol.sim`` (the simulated endpoint and
the demo) and ``mmevol.cli`` (the ``mmevol`` command).
"""

__version__ = "0.2.0"
