"""The Jupyter front: magics, the progress widget and text line, the kernelspec.

- ``magics``: ``%%ceranubis`` and ``%ceranubis``.
- ``session``: what the magics keep between cells (executors, the view of a run).
- ``progress``: the pure progress model (a frozen snapshot); ``widget`` and ``live`` draw it.
- ``tables``: tables of hosts and projects for the notebook.
- ``kernelspec``: the "Python 3 (ceranubis)" kernel.

May import: ``projects``, ``cluster``, ``wire``, ``errors``, IPython and ipywidgets. Never
``cli``.
"""
