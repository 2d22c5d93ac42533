"""The wire: sans-IO frames and messages, how Python objects become bytes, and the one
loop that writes queued bytes to a descriptor.

- ``messages``: the frozen message dataclasses and their binary layouts.
- ``framing``: length-prefixed frames, encode and the incremental decoder.
- ``protocol``: the connection state machine (one transition table), client and node side.
- ``serialize``: pickle/dill choice, out-of-band buffers, remote exceptions.
- ``iov``: zero-copy ``writev`` of queued chunks, partial writes kept for later.
- ``describe``: how messages show a user's value, and name the one that will not pickle.

May import: the standard library, dill, and ``ceranubis_jupyter.errors``. Shipped to every
host inside the node bundle, so nothing here may import another sub-package.
"""
