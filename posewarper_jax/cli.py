"""One error style for every command line of the project.

An *expected* failure (a bad config value, bad data, a bad path, a busy or unwritable workdir,
a full disk, a broken checkpoint or weight file) prints one line on stderr and exits with
status 2::

  error: config.stage2.lr=-1.0: must be > 0

The line names the file, field or value at fault and, where there is one, what to do.
``--debug`` shows the traceback instead. Anything else (a bug) keeps its traceback.

Expected failures are instances of ``ExpectedError`` (the project's error classes derive from
it: ``experiment.ConfigError``, ``formats.AnnotationError``, ``pipeline.BadImageError``,
``convert.ConversionError``, ...) and ``OSError``\\ s of the storage itself (``STORAGE_ERRNOS``:
no space, quota, read-only file system, no permission). A new command line gets the style
with::

  def main(argv=None) -> int:
      parser = argparse.ArgumentParser(...)
      cli.add_debug_flag(parser)
      args = parser.parse_args(argv)
      return cli.guarded(lambda: run(args), debug=args.debug)

or, for an absl program, ``cli.run_absl(main)`` in place of ``app.run(main)``.

This module imports nothing heavy: the error classes of the other modules derive from it.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable, Sequence

EXIT_ERROR = 2
DEBUG_FLAG = "--debug"
# OSError numbers that come from the storage (or its permissions), never from a bug.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
)
_STORAGE_ADVICE = {
    errno.ENOSPC: "free some space and run the same command again (it resumes)",
    errno.EDQUOT: "free some quota and run the same command again (it resumes)",
    errno.EFBIG: "the file system refuses files this large; choose another location",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.EACCES: "no permission; choose a location you can write to",
    errno.EPERM: "not permitted; choose a location you can write to",
}


class ExpectedError(Exception):
    """A failure the user can fix (input, config, paths, storage); shown as one line.

    ``details`` (optional, a few lines) are printed indented under the line.
    """

    details: Sequence[str] = ()


class WriteError(ExpectedError, OSError):
    """Writing a file failed (full disk, quota, permissions); the message names the path.

    ``errno`` is the cause's. What was finished before stays on disk.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "write failed"


def storage_error(err: OSError) -> bool:
    return isinstance(err, OSError) and err.errno in STORAGE_ERRNOS


def write_error(path: str, err: OSError, what: str = "") -> WriteError:
    """A ``WriteError`` for ``err`` raised while writing ``path``: errno text and advice."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    advice = _STORAGE_ADVICE.get(err.errno, "")
    text = f"{path}: writing {what or 'the file'} failed: {reason} (errno {err.errno})"
    if advice:
        text += f"; {advice}"
    out = WriteError(text)
    out.errno = err.errno
    out.filename = path
    return out


def is_expected(err: BaseException) -> bool:
    """Whether ``err`` is a failure to report in one line (see the module docstring)."""
    return isinstance(err, ExpectedError) or storage_error(err)


def one_line(err: BaseException) -> str:
    """The error's message on one line (the first line of a multi-line message)."""
    if isinstance(err, OSError) and not isinstance(err, ExpectedError):
        where = err.filename or ""
        reason = os.strerror(err.errno) if err.errno else str(err)
        advice = _STORAGE_ADVICE.get(err.errno, "")
        text = f"{where}: {reason}" if where else reason
        return f"{text}; {advice}" if advice else text
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    first = text.splitlines()[0] if text else type(err).__name__
    return first


def print_error(err: BaseException, prog: str | None = None) -> None:
    """``error: <one line>`` on stderr, with the error's ``details`` indented below."""
    prefix = f"{prog}: error: " if prog else "error: "
    print(prefix + one_line(err), file=sys.stderr, flush=True)
    for line in getattr(err, "details", ()) or ():
        print(f"  {line}", file=sys.stderr, flush=True)


def guarded(
    fn: Callable[[], int | None],
    *,
    debug: bool = False,
    expected: tuple[type[BaseException], ...] = (),
) -> int:
    """Runs ``fn``; an expected failure (or one of ``expected``) prints one line and gives
    ``EXIT_ERROR``; with ``debug`` it is raised with its traceback. Returns the exit status:
    ``fn``'s when it returns an int, else 0."""
    try:
        status = fn()
    except Exception as err:
        if debug or not (is_expected(err) or isinstance(err, expected)):
            raise
        print_error(err)
        return EXIT_ERROR
    return int(status) if isinstance(status, int) else 0


def add_debug_flag(parser) -> None:
    """``--debug`` on an argparse parser: show tracebacks of expected failures."""
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="show the traceback of an expected failure"
    )


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether ``--debug`` (or ``--debug=true``) is on the command line."""
    argv = sys.argv if argv is None else argv
    return any(a == DEBUG_FLAG or a.lower() in ("--debug=true", "--debug=1") for a in argv)


# ----------------------------------------------------------------------------- absl programs


def _flag_error_line(err: BaseException, argv: Sequence[str]) -> str:
    """One line for a failure while absl parses the flags (a config file's error included)."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Error whilst parsing config file" in text and lines:
        # config_flags puts the config file's traceback in the message: keep its last line,
        # the exception, without the exception's type name.
        last = lines[-1]
        head, sep, tail = last.partition(": ")
        if sep and head.replace(".", "").replace("_", "").isalnum() and " " not in head:
            last = tail
        return last
    if isinstance(err, AttributeError | KeyError) and "Did you mean" in text:
        return _misspelt_override_line(err, argv)
    return lines[0] if lines else type(err).__name__


def _misspelt_override_line(err: BaseException, argv: Sequence[str]) -> str:
    import re

    text = str(err)
    hint = re.search(r'Did you mean \W*"([\w.]+)\W*" instead of \W*"([\w.]+)', text)
    words = re.findall(r"[A-Za-z_][\w]*", text)
    field = hint.group(2) if hint else (words[0] if words else "?")
    overrides = [a.partition("=")[0] for a in argv if a.startswith("--config.")]
    flag = next((f for f in overrides if field in f.split(".")[1:]), f"--config.<...>.{field}")
    line = f"{flag}: the config has no field {flag[len('--config.') :]!r}"
    return f"{line} (did you mean {hint.group(1)!r}?)" if hint else line


def absl_flags_parser(argv: list[str]) -> list[str]:
    """absl's flag parsing with one-line errors (``run_absl`` passes it to ``app.run``)."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as err:
        if debug_requested(argv):
            raise
        print(f"error: {_flag_error_line(err, argv)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_ERROR)


def run_absl(main: Callable[[list[str]], int | None]) -> None:
    """``absl.app.run(main)`` with this module's error style; ``--debug`` must be defined
    as an absl flag by the program (``define_absl_debug_flag``)."""
    from absl import app

    def wrapped(argv):
        return guarded(lambda: main(argv), debug=debug_requested(sys.argv))

    app.run(wrapped, flags_parser=absl_flags_parser)


def define_absl_debug_flag() -> None:
    from absl import flags

    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, "Show the traceback of an expected failure.")


# ----------------------------------------------------------------------------- paths


def check_writable_dir(path: str, what: str) -> str:
    """Creates directory ``path`` if needed and checks that a file can be written in it.

    Raises:
      ExpectedError: ``path`` (or a parent) is a file, or the directory cannot be made or
        written to (read-only, no permission, full disk); the message names ``what``.
    """
    path = os.fspath(path)
    from posewarper_jax import storage

    if storage.is_remote(path):
        return _check_writable_url(path, what)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ExpectedError(f"{what} {path}: exists and is not a directory; choose another path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ExpectedError(
            f"{what} {path}: cannot be created: {os.strerror(err.errno or 0) or err}"
            + (f" ({err.filename})" if err.filename and err.filename != path else "")
        ) from err
    probe = os.path.join(path, f".write-test-{socket.gethostname()}-{os.getpid()}")
    try:
        with open(probe, "w") as f:
            f.write("ok")
    except OSError as err:
        raise ExpectedError(
            f"{what} {path}: cannot be written to: {os.strerror(err.errno or 0) or err}"
        ) from err
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
    return path


def _check_writable_url(path: str, what: str) -> str:
    """``check_writable_dir`` of a folder on an object store (``gs://``, ``s3://``): not an
    object, and an object can be written under it (nothing is created otherwise)."""
    from posewarper_jax import storage

    path = path.rstrip("/")

    def fail(doing: str, err: BaseException) -> ExpectedError:
        reason = str(err).partition(": ")[2] if isinstance(err, storage.StorageError) else err
        return ExpectedError(f"{what} {path}: {doing}: {reason or type(err).__name__}")

    try:
        if storage.isfile(path):
            raise ExpectedError(f"{what} {path}: is an object, not a folder; choose another path")
    except storage.StorageError as err:
        raise fail("cannot be read", err) from err
    probe = f"{path}/.write-test-{socket.gethostname()}-{os.getpid()}"
    try:
        storage.write_bytes(probe, b"ok")
        storage.remove(probe)
    except (storage.StorageError, OSError) as err:
        raise fail("cannot be written to", err) from err
    return path


def check_output_file(path: str, what: str) -> str:
    """Checks that file ``path`` can be written: not a directory, its folder writable."""
    from posewarper_jax import storage

    path = os.fspath(path)
    if storage.isdir(path):
        raise ExpectedError(f"{what} {path}: is a directory; give a file name")
    check_writable_dir(storage.dirname(storage.abspath(path)), f"the folder of {what}")
    return path
