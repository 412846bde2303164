"""The errors mmgen-lightning raises on purpose, and how the ``mmgen`` command reports them.

Every error a user can cause (a bad option, a bad file, a checkpoint that does not fit) is one of
these, or a ``ValueError``/``FileNotFoundError`` raised by the package's own code. The ``mmgen``
command (:func:`mmgen_lightning.cli.main`) prints such an error as one line on stderr::

    mmgen <command>: error: <what> (<where>): <what to do>

and exits with :attr:`MMGenError.exit_code`: 2 for usage errors, 1 for data and checkpoint errors.
``--debug`` (or ``MMGEN_DEBUG=1``) shows the traceback instead. Anything else (an exception raised
inside torch, or a bug) keeps its traceback, since it is not the user's to fix.

This module imports nothing heavy: the command's start-up and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import linecache
import re
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

class MMGenError(Exception):
    """An error the user can fix: ``what`` went wrong, ``where`` (file, line, option), ``hint`` (what to do).

    Subclasses ``ValueError`` (via its subclasses), so code that catches ``ValueError`` keeps working.
    """

    exit_code = 1

    def __init__(self, what: str, where: str | None = None, hint: str | None = None) -> None:
        self.what, self.where, self.hint = what, where, hint
        super().__init__(self.summary())

    def summary(self) -> str:
        text = self.what + (f" ({self.where})" if self.where else "")
        return text + (f": {self.hint}" if self.hint else "")

    def __str__(self) -> str:  # KeyError's __str__ would quote the message
        return self.summary()


class UsageError(MMGenError, ValueError):
    """A bad command-line option or config value (exit status 2)."""

    exit_code = 2


class InputError(MMGenError, ValueError):
    """A bad data file, caption or manifest row (exit status 1)."""


class CheckpointError(MMGenError, ValueError):
    """A checkpoint that is missing, unreadable, or of another family than asked (exit status 1)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors are a :class:`UsageError` (one line, exit status 2), not usage + message."""

    def error(self, message: str):
        raise UsageError(message, None, f"see `{self.prog} --help`")


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def raised_on_purpose(error: BaseException) -> bool:
    """Whether ``error`` came from a ``raise`` statement in this package's own code: a message written
    for the user. An exception from inside torch, or from a subscript or call in our code (a bug), is not."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    try:
        ours = Path(filename).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        ours = False
    return ours and linecache.getline(filename, tb.tb_lineno).strip().startswith("raise ")


#: exception types whose message, when raised on purpose by the package, is meant for the user
USER_FACING = (ValueError, TypeError, OSError, KeyError, NotImplementedError)


def user_error(error: BaseException) -> tuple[int, str] | None:
    """``(exit status, one-line message)`` for an error the user can fix, or ``None`` for a bug.

    Wrapped errors are unwrapped: jsonargparse reports a class that failed to build as "Does not validate
    against any of the Union subtypes", raised from the project's own error, which is the one shown.
    """
    chain = _chain(error)
    found = next((e for e in reversed(chain) if isinstance(e, MMGenError)), None)
    if found is None:
        found = next((e for e in reversed(chain) if isinstance(e, USER_FACING) and raised_on_purpose(e)), None)
    if found is None:
        explained = _relayed(chain) or _lost_process(chain)
        if explained is not None:
            return explained
    if found is None:
        # a command-line value jsonargparse refused before building anything, or a Trainer setting Lightning
        # refused (MisconfigurationException: an accelerator this machine lacks, ...): usage errors
        found = next((e for e in chain if isinstance(e, argparse.ArgumentError)
                      or type(e).__name__ == "MisconfigurationException"), None)
        if found is None:
            return None
        return 2, one_line(str(found), drop=JSONARGPARSE_NOISE)
    code = found.exit_code if isinstance(found, MMGenError) else getattr(error, "mmgen_exit_code", 1)
    message = str(found) if not isinstance(found, KeyError) or isinstance(found, MMGenError) else \
        str(found.args[0]) if found.args else repr(found)
    advice = getattr(found, "advice", None)  # an error whose message is also logged elsewhere keeps it short
    return code, one_line(message + (f": {advice}" if advice else ""))


#: lines of jsonargparse's Union errors that say nothing about the value given
JSONARGPARSE_NOISE = ("Given value", "Subtypes:", "Errors:", "Does not validate against any of the Union subtypes",
                      "Expected a <class 'NoneType'>", "Subclass types expect one of", "a class path (str)",
                      "a dict with ")


#: the last line of a traceback formatted in another process, when the error was one of ours
_RELAYED = re.compile(r"^mmgen_lightning\.[\w.]+\.(\w+): (.+)$", re.MULTILINE)


def _relayed(chain: list[BaseException]) -> tuple[int, str] | None:
    """An error of ours raised in a worker process (DataLoader workers, litdata writers), which the parent
    re-raises as a RuntimeError holding the worker's formatted traceback: its own message, not the stack."""
    for error in chain:
        text = str(error)
        if "Traceback (most recent call last)" not in text:
            continue
        found = _RELAYED.findall(text)
        if found:
            kind, message = found[-1]
            return (2 if kind == "UsageError" else 1), one_line(message)
    return None


#: how torch reports a collective (DDP's gradient all-reduce, a broadcast, a barrier) that failed because another
#: process of the run died, or did not answer within the process group's timeout
_LOST_PROCESS = re.compile(r"gloo/transport|ProcessGroup(?:Gloo|NCCL)|Connection (?:reset|closed) by peer")


def _lost_process(chain: list[BaseException]) -> tuple[int, str] | None:
    """A distributed run whose other process died or hung: not a bug, and the stack says nothing the user
    can act on; name the cause (gloo's or NCCL's first sentence, without its source location) and the way on."""
    for error in chain:
        if type(error).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError") or (
                isinstance(error, RuntimeError) and _LOST_PROCESS.search(str(error))):
            first = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().splitlines()[0]).split(". ")[0]
            return 1, (f"another process of this distributed run died or stopped answering ({first}), so this one "
                       "stopped too: resume the run from its last checkpoint (--ckpt_path last, or the checkpoint's path)")
    return None


def one_line(message: str, drop: tuple[str, ...] = ()) -> str:
    """A possibly multi-line message as one line (lines joined by '; ', those starting with ``drop`` left out)."""
    lines = [re.sub(r"^\s*-\s+", "", line).strip() for line in message.splitlines()]  # jsonargparse's bullets
    text = "; ".join(line for line in lines if line and not line.startswith(drop))
    return text.replace(":; ", ": ")


def report(command: str, error: BaseException, debug: bool = False) -> int | None:
    """Print ``error`` as ``mmgen <command>: error: ...`` on stderr and return the exit status, or
    ``None`` (print nothing) when it is a bug or ``debug`` is on: the caller then re-raises it."""
    found = None if debug else user_error(error)
    if found is None:
        return None
    code, line = found
    print(f"mmgen {command}: error: {line}".replace("mmgen : ", "mmgen: "), file=sys.stderr)
    return code


__all__ = ["ArgumentParser", "CheckpointError", "InputError", "MMGenError", "UsageError", "one_line", "raised_on_purpose",
           "report", "user_error"]
