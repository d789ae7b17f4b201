"""Bad input and exit codes: what the CLI, the executor, the training loop and the sbatch templates agree on."""

import errno
import os
import re
from enum import IntEnum


class UserError(Exception):
    """Bad input: message is one line naming the key/file/value and what is valid; CLI exits 2."""


class ExitCode(IntEnum):
    """Process exit statuses. slurm/*.sbatch test 75 by value (documented there; shell cannot import this)."""

    OK = 0
    FAILED = 1  # a unit failed; its error line is in .collapse/failed/ and `collapse status`
    BAD_INPUT = 2  # a UserError: one line on stderr, nothing written
    NOT_DONE = 3  # `collapse stage`: the unit was locked by another live process / is still running elsewhere
    REQUEUE = 75  # EX_TEMPFAIL: checkpointed on SIGTERM/SIGUSR1; rerun (requeue) to resume
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    BROKEN_PIPE = 141  # stdout closed by its reader (`collapse status | head`): 128 + SIGPIPE, as a Unix tool ends


# Disk conditions a user fixes (not bugs, not a unit's failure): the sweep stops and the CLI prints one
# line with the fix and exits 2, like bad input, wherever the OSError is raised (a unit included).
DISK_ERRORS = {errno.EROFS: "the run directory must be writable (runs_dir: to write elsewhere)",
               errno.EACCES: "the run directory must be writable (runs_dir: to write elsewhere)",
               errno.ENOSPC: "free disk space and re-run the same command: it continues where it stopped",
               errno.EDQUOT: "free quota and re-run the same command: it continues where it stopped"}


def is_disk_error(exc: BaseException) -> bool:
    """An OSError the user fixes on the disk (read-only, no permission, full, over quota)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRORS


# Rust's io::Error as a library written in Rust reports it in its own exception type (safetensors'
# SafetensorError: "Error while serializing: I/O error: No space left on device (os error 28)").
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def wrapped_disk_error(exc: BaseException) -> OSError | None:
    """The disk error a library reported in another exception type, as the OSError it was; None if none."""
    if isinstance(exc, OSError):
        return None
    match = _RUST_OS_ERROR.search(str(exc))
    code = int(match.group(1)) if match else None
    return OSError(code, os.strerror(code)) if code in DISK_ERRORS else None
