"""Progress bars on a terminal, silence in a log file.

A tqdm bar redraws itself with carriage returns: useful on a terminal,
thousands of lines of noise in a file. Every bar of the product comes from
here, so redirected output holds only the per-epoch / per-fold lines.
"""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown only when ``enabled`` and stderr is a terminal."""
    # disable=None is tqdm's own "only on a TTY" switch.
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
