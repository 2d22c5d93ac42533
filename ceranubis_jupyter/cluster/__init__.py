"""The client's side of running tasks on nodes: executor, scheduler, transports.

::

    CeranubisExecutor ─► Scheduler (loop thread) ─► NodeLink ─► Transport ─► node
        mapping, tasks      loopthread, outcomes      link       transport (pipes), ssh,
        functions           shares, echo                         bootstrap, hosts

``functions`` gives each function its id (shipped once, never kept alive); ``shares``
splits a dispatch over the nodes; ``echo`` writes what tasks print to a script's own
stdout and stderr. ``ssh_options`` resolves a host's SSH settings and refuses any that
would turn host-key checking off; ``strays`` finds and ends nodes whose client died.
``fastpaths`` and ``framecap`` are the executor's switches and its data-frame cap.
``openssh`` is the opt-in transport through the system's ``ssh`` binary
(``CERANUBIS_SSH_CLIENT=openssh``; ``reach`` picks it). ``bytecode`` builds the pycs that
``bootstrap`` ships with the node bundle, so that a cold host compiles nothing.

May import: ``wire``, ``errors``, the standard library, dill and asyncssh. Never ``node``
(the node code reaches hosts as files, not imports), ``projects``, ``jupyter`` or ``cli``.
"""
