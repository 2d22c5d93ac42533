"""The data-frame cap a user may set: how large one Function, Tasks or Results frame may be.

Control frames have a fixed cap (``wire.messages.MAX_CONTROL_FRAME``); data frames carry
the user's arguments and results, so their cap is a setting: ``CeranubisExecutor(
max_data_frame=...)`` for one executor, ``$CERANUBIS_MAX_DATA_FRAME`` (bytes, or with a
``K``/``M``/``G``/``T`` suffix, binary) for every executor of the process; the default is
``wire.messages.MAX_DATA_FRAME``. The node learns it from ``Configure``. Batches are split
to fit, so it bounds a single task's or result's size, not a sweep's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import ConfigError
from ..wire import protocol as p

# The environment variable that sets the data-frame cap for the whole process.
MAX_DATA_FRAME_ENV = "CERANUBIS_MAX_DATA_FRAME"
# The smallest cap allowed: every control frame and a worker's direct write fit under it.
MIN_DATA_FRAME = p.MAX_CONTROL_FRAME
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def data_frame_cap(value: int | None = None, environ: Mapping[str, str] = os.environ) -> int:
    """The cap to use: ``value``, else ``$CERANUBIS_MAX_DATA_FRAME``, else the default.

    Raises:
        ConfigError: the value is not a whole number of bytes of at least 1 MiB.
    """
    if value is None:
        text = environ.get(MAX_DATA_FRAME_ENV, "").strip()
        value = _parse_size(text) if text else p.MAX_DATA_FRAME
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_DATA_FRAME:
        raise ConfigError(
            f"max_data_frame must be a whole number of bytes of at least {MIN_DATA_FRAME}, "
            f"got {value!r}"
        )
    return value


def _parse_size(text: str) -> int:
    number = text.upper().removesuffix("B").removesuffix("I")
    unit = number[-1:] if number[-1:] in _UNITS else ""
    digits = number.removesuffix(unit).strip()
    if not digits.isdigit():
        raise ConfigError(
            f"${MAX_DATA_FRAME_ENV} must be bytes, or a number with K, M, G or T (like 8G), "
            f"got {text!r}"
        )
    return int(digits) * _UNITS[unit]


__all__ = ["MAX_DATA_FRAME_ENV", "MIN_DATA_FRAME", "data_frame_cap"]
