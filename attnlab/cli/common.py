"""What every entry point shares: runtime flags, flag parsing with one-line errors, and
one error path that turns a user's or the disk's error into one line on stderr (exit
status 2) instead of a traceback.

What becomes one line (``user_error``): a ``ConfigError`` (a bad value, flag, workdir or
checkpoint; ``WorkdirError`` and ``HFImportError`` included), any ``OSError`` (disk full,
read-only file system, no permission, a missing file, a file where a directory belongs:
``error: <doing what> <path> failed: <why>``), an orbax / tensorstore error that reports an
OS error in its text (tensorstore raises them as ``ValueError`` or ``RuntimeError``), and a
``ValueError`` (how libraries reject a value). Anything else (a ``TypeError``, ``KeyError``,
``AttributeError``, ... from inside attnlab or a library) is a bug, not the user's error, and
keeps its traceback. ``ATTNLAB_TRACEBACK=1`` in the environment prints the traceback of
every error as well (for a bug report).

Background threads: orbax writes checkpoints in threads and logs a failed write with its
traceback (through absl logging) before the main thread raises the same error, and
tensorstore's other pending writes then report "Event loop is closed" as unraisable
exceptions. During a command those records, a thread's uncaught exception
(``threading.excepthook``) and an unraisable exception (``sys.unraisablehook``) are dropped
when the exception is a user or disk error (the main thread reports it in one line) or that
aftermath, and shown as before otherwise.
"""

from __future__ import annotations

import errno
import logging as py_logging
import os
import re
import sys
import threading
import warnings

from absl import app, flags, logging

from attnlab import config_lib, outputs, runtime
from attnlab.registry import ConfigError, nearest
from attnlab.workdir import describe_os_error, os_error_in_text


def _config_flag_names() -> list[str]:
  """Names of the flags that hold ml_collections configs (``--config``, ``--streaming``)."""
  names = []
  for name, flag in flags.FLAGS._flags().items():   # noqa: SLF001 - absl has no public listing
    if type(flag).__module__.startswith("ml_collections") and name == flag.name:
      names.append(name)
  return names


def _missing_field(argv, config_flags: list[str]) -> str | None:
  """The first ``--<config>.a.b=v`` in ``argv`` naming a field the config lacks, as a sentence."""
  loaded = {}
  for arg in argv[1:]:
    for name in config_flags:
      if arg.startswith(f"--{name}=") and name == "config":
        path, _, preset = arg.split("=", 1)[1].partition(":")
        try:
          loaded[name] = config_lib.load_config_file(path, preset)
        except Exception as e:  # noqa: BLE001 - reported as the config file's own error
          return f"--config={arg.split('=', 1)[1]}: {str(e).strip().splitlines()[-1]}"
  for arg in argv[1:]:
    for name, config in loaded.items():
      prefix = f"--{name}."
      if not arg.startswith(prefix):
        continue
      keys = arg[len(prefix):].split("=", 1)[0].split(".")
      node, where = config, name
      for key in keys:
        if not hasattr(node, "keys"):
          break
        if key not in node:
          close = nearest(key, node.keys())
          hint = f"; nearest: {', '.join(close)}" if close else ""
          return (f"{arg.split('=', 1)[0]}: {where} has no field {key!r}{hint} "
                  f"(valid: {', '.join(sorted(node.keys()))})")
        node, where = node[key], f"{where}.{key}"
  return None


def _unloaded_config(name: str) -> str | None:
  """Why the config file of flag ``--<name>`` could not be loaded, or None. (ml_collections
  defers that error to the first use of the config, deep inside a command.)"""
  flag = flags.FLAGS[name]
  if type(flag.value).__name__ != "_ErrorConfig":
    return None
  try:
    path = flag.config_filename
  except Exception:  # noqa: BLE001 - a flag without a file name
    path = "?"
  cause = getattr(flag.value, "_error", None)
  while cause is not None and cause.__cause__ is not None:
    cause = cause.__cause__
  lines = [line.strip() for line in str(cause or "").splitlines() if line.strip()]
  why = lines[-1] if lines else "it cannot be read"
  why = re.sub(r"^\[Errno \d+\] ", "", why)
  if not os.path.exists(path):
    why = f"no such file ({why})" if "No such file" not in why else "no such file"
  return f"--{name}={path!r}: cannot load the config file: {why}"


def parse_flags(argv):
  """``flags.FLAGS(argv)``, with a bad flag or config override, or a config file that
  cannot be loaded, reported in one line."""
  try:
    parsed = flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - absl and ml_collections raise many kinds
    message = _missing_field(argv, _config_flag_names())
    if message is None:
      lines = [line for line in str(e).strip().splitlines() if line.strip()]
      message = lines[-1] if lines else type(e).__name__
      message = message.strip().strip("'\"")
    fail(message)
  for name in _config_flag_names():
    message = _unloaded_config(name)
    if message:
      fail(message)
  return parsed


def define_run_flags() -> None:
  """``--restart`` and ``--accept_data_change``: the two ways a trainer may be told to do
  what it otherwise refuses (``docs/guarantees.md``); ``run_options()`` passes them on."""
  flags.DEFINE_bool("restart", False, "Train again from step 0 a run whose checkpoints are "
                    "all unreadable (set aside); its earlier metrics are kept under restarts/.")
  flags.DEFINE_bool("accept_data_change", False, "Resume on data that differs from what the "
                    "run was trained on (a changed file, another Python's built-in corpus); "
                    "recorded in data.json.")


def run_options() -> dict:
  """The trainer options of ``define_run_flags``, as keyword arguments."""
  return {"restart": flags.FLAGS.restart, "accept_data_change": flags.FLAGS.accept_data_change}


def fail(message: str) -> None:
  """Print ``error: <message>`` (one line) and exit with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


# what tensorstore appends to its messages for debugging (the whole spec, source lines)
_TENSORSTORE_NOISE = re.compile(r"\s*\[(tensorstore_spec|source locations)='.*?'\]", re.DOTALL)


def _describe_os_error(error: OSError) -> str:
  """One sentence naming the path and the reason of an ``OSError`` nobody caught nearer."""
  writing = error.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG)
  if error.filename is None:          # the OS did not say which file
    return describe_os_error(error, "writing" if writing else "accessing", "a file")
  path = os.fsdecode(error.filename)
  if error.filename2 is not None:
    return describe_os_error(error, f"moving {path} to", os.fsdecode(error.filename2))
  if writing or ".orbax-checkpoint-tmp" in path:
    return outputs.describe_write_error(error, path)    # an orbax checkpoint: named as such
  if error.errno == errno.ENOENT:
    return f"{path}: no such file or directory"
  return describe_os_error(error, "accessing", path)


def user_error(error: BaseException) -> str | None:
  """The one line to print for an error that is the user's or the disk's, or None for one
  that is a bug (its traceback is shown). See the module docstring."""
  if isinstance(error, ConfigError):
    return str(error)
  if isinstance(error, OSError):
    if error.errno is None:             # raised with a message only (a library's own words)
      lines = [line.strip() for line in str(error).splitlines() if line.strip()]
      return lines[-1] if lines else type(error).__name__
    return _describe_os_error(error)
  if isinstance(error, (ValueError, RuntimeError)):
    inner = os_error_in_text(error)
    if inner is not None:
      return _describe_os_error(inner)
    if isinstance(error, ValueError):
      return _TENSORSTORE_NOISE.sub("", str(error))
  return None


def _quiet_background_errors() -> None:
  """Drop background threads' reports of user and disk errors (orbax logs a failed async
  write with its traceback, ~200 lines, before the main thread raises it); show the rest."""

  def keep(record) -> bool:
    info = record.exc_info
    if info and info[1] is not None and user_error(info[1]) is not None:
      return False
    if record.levelno >= py_logging.ERROR and "/orbax/" in (record.pathname or "") and \
        os_error_in_text(Exception(record.getMessage())) is not None:
      return False
    return True

  # absl's logger (orbax logs through absl) and every handler of the root logger (records
  # that other loggers propagate)
  for target in (py_logging.getLogger("absl"), *py_logging.getLogger().handlers):
    target.addFilter(keep)
  previous = threading.excepthook

  def excepthook(args):
    if args.exc_value is not None and user_error(args.exc_value) is not None:
      return                       # the main thread reports it, in one line
    previous(args)

  threading.excepthook = excepthook
  previous_unraisable = sys.unraisablehook

  def unraisablehook(unraisable):
    error = unraisable.exc_value
    if error is not None and (user_error(error) is not None or _late_callback(error)):
      return
    previous_unraisable(unraisable)

  sys.unraisablehook = unraisablehook


def _late_callback(error: BaseException) -> bool:
  """The aftermath of a failed asynchronous write: tensorstore completes the other pending
  writes into orbax's event loop, already closed by the failure ("Event loop is closed")."""
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def run(main, define_flags) -> None:
  """Configure the runtime, define the flags, parse them and call ``main(argv)``; a user's
  or the disk's error from ``main`` becomes one line (``user_error``), exit status 2."""
  runtime.configure()
  define_flags()

  def guarded(argv):
    logging.set_verbosity(logging.WARNING)   # orbax logs every checkpoint access at INFO
    _quiet_background_errors()
    try:
      return main(argv)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
      message = user_error(e)
      if message is None:
        raise                                # a bug: its traceback
      # the aftermath of a failed asynchronous write, reported at exit: the error is above
      warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
      if os.environ.get("ATTNLAB_TRACEBACK"):
        import traceback
        traceback.print_exc()
      fail(message)

  app.run(guarded, flags_parser=parse_flags)


__all__ = ["ConfigError", "fail", "parse_flags", "run", "user_error"]
