"""Progress bars that `--no-progress` silences.

`collapse run --no-progress` (and `collapse stage` writing to a log file) sets TQDM_DISABLE=1, which
tqdm (>= 4.66) reads as the default of `disable`. An explicit `disable=False` would override that
default and draw the bar anyway, so a bar that is wanted leaves `disable` unset, and only a bar that is
not wanted (another process's, a caller's progress=False) passes disable=True.
"""

from __future__ import annotations

from typing import Any, Iterable


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **kwargs: Any):
    """tqdm(iterable, **kwargs), hidden when `show` is false or TQDM_DISABLE is set."""
    from tqdm.auto import tqdm

    if not show:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
