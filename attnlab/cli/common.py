"""What every entry point shares: runtime flags, flag parsing with one-line errors, and
turning a user error into one line on stderr (exit status 2) instead of a traceback."""

from __future__ import annotations

import sys

from absl import app, flags, logging

from attnlab import config_lib, runtime
from attnlab.registry import ConfigError, nearest


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


def parse_flags(argv):
  """``flags.FLAGS(argv)``, with a bad flag or config override reported in one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - absl and ml_collections raise many kinds
    message = _missing_field(argv, _config_flag_names())
    if message is None:
      lines = [line for line in str(e).strip().splitlines() if line.strip()]
      message = lines[-1] if lines else type(e).__name__
      message = message.strip().strip("'\"")
    fail(message)


def fail(message: str) -> None:
  """Print ``error: <message>`` (one line) and exit with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def run(main, define_flags) -> None:
  """Configure the runtime, define the flags, parse them and call ``main(argv)``; a
  ``ConfigError`` / ``ValueError`` / ``FileNotFoundError`` from ``main`` becomes one line."""
  runtime.configure()
  define_flags()

  def guarded(argv):
    logging.set_verbosity(logging.WARNING)   # orbax logs every checkpoint access at INFO
    try:
      return main(argv)
    except (ConfigError, ValueError, FileNotFoundError) as e:
      fail(str(e))

  app.run(guarded, flags_parser=parse_flags)


__all__ = ["ConfigError", "fail", "parse_flags", "run"]
