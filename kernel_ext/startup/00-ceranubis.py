"""IPython startup file: load the ceranubis magics in every IPython session.

Copy it into ``$(ipython locate profile)/startup/`` to get ``%%ceranubis`` in any kernel
or terminal IPython without ``%load_ext``; the "Python 3 (ceranubis)" kernel does not
need it (it starts with ``--ext=ceranubis_jupyter``).
"""

from IPython import get_ipython

_shell = get_ipython()
if _shell is not None:
    _shell.extension_manager.load_extension("ceranubis_jupyter")
