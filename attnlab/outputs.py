"""Result files written all or nothing: a command that writes several files (``evaluate``'s
``eval.{json,md,png}``, ``analyze``'s folder, a sweep's or the retrieval study's
``results.*``, an imported workdir) writes them under temporary names and renames them into
place only once every one is complete.

    with outputs.staged(out) as stage:
      stage.write_text("eval.json", text)
      plot(records, stage.path("eval.png"))      # any writer: it gets a path to write
    # here every file is in place, or (on any error) none has changed

``stage.path(name)`` is where to write ``out/name`` for now: a file of the same name (so
writers that infer the format from the extension, as matplotlib does, still work) in a
hidden staging folder inside ``out`` (``.staging-<pid>-<random>/``, on the same file system,
so the final step is a rename). When the block ends without an error, each staged file
replaces its destination; the files it replaces are kept aside until all renames have
succeeded, and put back if one fails, so an earlier complete set is never mixed with a
partial new one. On any error the staged files are deleted (and ``out`` too, if this call
created it and it is still empty) and the error propagates; an ``OSError`` (disk full,
read-only file system, no permission, a path that is a file) becomes one ``WorkdirError``
line naming the file (``workdir.describe_os_error``).

A whole directory that must appear at once (``python -m attnlab.import_hf``'s new workdir)
uses ``staged_directory``: it is built under a hidden sibling name and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import time
import uuid

from attnlab.registry import ConfigError
from attnlab.workdir import WorkdirError, describe_os_error


_ORBAX_TMP = re.compile(r"\.orbax-checkpoint-tmp.*$")
_REPLACED = ".replaced"     # in the staging folder: the files a commit replaces, until it ends


def describe_write_error(error: OSError, path) -> str:
  """One line for a failed write of ``path`` (``workdir.describe_os_error``); a path inside
  an orbax checkpoint being written (``<step>.orbax-checkpoint-tmp/...``) is named as that
  checkpoint."""
  text = str(path)
  if ".orbax-checkpoint-tmp" in text:
    return describe_os_error(error, "writing the checkpoint", _ORBAX_TMP.sub("", text))
  return describe_os_error(error, "writing", text)


class Stage:
  """The files of one ``staged`` block: where to write each, and what was written."""

  def __init__(self, out: pathlib.Path, folder: pathlib.Path):
    self.out, self.folder = out, folder
    self.names: list[str] = []        # relative names, in the order first asked for

  def _relative(self, name) -> str:
    rel = pathlib.PurePosixPath(str(name))
    if rel.is_absolute() or not rel.parts or ".." in rel.parts or rel.parts[0].startswith(
        ".staging-"):
      raise ValueError(f"outputs: {name!r} is not a plain relative file name")
    return str(rel)

  def path(self, name) -> pathlib.Path:
    """Where to write ``out/name`` now (its parent folders exist)."""
    rel = self._relative(name)
    staged = self.folder / rel
    staged.parent.mkdir(parents=True, exist_ok=True)
    if rel not in self.names:
      self.names.append(rel)
    return staged

  def write_text(self, name, text: str) -> pathlib.Path:
    """Write ``text`` (UTF-8) as ``out/name``; returns its final path."""
    self.path(name).write_text(text, encoding="utf-8")
    return self.out / self._relative(name)

  def final(self, name) -> pathlib.Path:
    """The path ``name`` will have once the block ends."""
    return self.out / self._relative(name)

  def files(self) -> list[pathlib.Path]:
    """The final paths of every staged file."""
    return [self.out / n for n in self.names]

  def _which(self, error: OSError) -> pathlib.Path:
    """The final path an ``OSError`` concerns (its file name mapped back from the staging
    folder), else the last file asked for, else ``out``."""
    for name in (error.filename, error.filename2):
      if name:
        p = pathlib.Path(os.fsdecode(name))
        try:
          rel = p.relative_to(self.folder)
        except ValueError:
          return p
        if rel.parts and rel.parts[0] == _REPLACED:      # moving an earlier file aside
          rel = pathlib.Path(*rel.parts[1:])
        return self.out / rel
    return self.out / self.names[-1] if self.names else self.out

  def _commit(self) -> None:
    """Rename every staged file into place; on a failure, put back what was replaced."""
    backup = self.folder / _REPLACED
    done = []                                  # (destination, its backup or None)
    try:
      for rel in self.names:
        staged, dest = self.folder / rel, self.out / rel
        if not staged.exists():
          continue                             # asked for but never written: nothing to place
        dest.parent.mkdir(parents=True, exist_ok=True)
        kept = None
        if dest.exists() or dest.is_symlink():
          if dest.is_dir() and not dest.is_symlink():
            raise IsADirectoryError(21, "Is a directory", str(dest))
          kept = backup / rel
          kept.parent.mkdir(parents=True, exist_ok=True)
          os.replace(dest, kept)
        done.append((dest, kept))
        os.replace(staged, dest)
    except BaseException:
      for dest, kept in reversed(done):
        with contextlib.suppress(OSError):
          if kept is not None:
            os.replace(kept, dest)
          else:
            dest.unlink(missing_ok=True)
      raise


def _prepare(out: pathlib.Path) -> bool:
  """Create ``out`` if needed; True when this call created it."""
  created = not out.exists()
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(describe_os_error(e, "creating the output directory", out)) from None
  return created


def check_out(out, flag: str = "--out") -> None:
  """Refuse (``ConfigError``, one line naming ``flag``) an output directory that is an
  existing file, or lies under one, before any work is done."""
  p = pathlib.Path(out)
  for q in (p, *p.parents):
    if q.exists():
      if not q.is_dir():
        what = "is a file" if q == p else f"lies under {str(q)!r}, which is a file"
        raise ConfigError(f"{flag}={str(out)!r} {what}; it must be a directory (created if "
                          f"missing) for the output files")
      return


@contextlib.contextmanager
def staged(out, flag: str = "--out"):
  """Stage the files written in the block (``Stage.path`` / ``Stage.write_text``) and rename
  them all into ``out`` when it ends; on any error, remove them and leave ``out`` as it
  was. ``flag`` names ``out`` in messages."""
  out = pathlib.Path(out)
  check_out(out, flag)
  created = _prepare(out)
  folder = out / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  stage = Stage(out, folder)
  try:
    try:
      folder.mkdir()
      yield stage
      stage._commit()                               # noqa: SLF001 - the block's own stage
    except OSError as e:
      raise WorkdirError(describe_write_error(e, stage._which(e))) from None  # noqa: SLF001
    except (ConfigError, ValueError, RuntimeError) as e:
      _rename_in_message(e, folder, out)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
    if created:
      with contextlib.suppress(OSError):
        out.rmdir()                                 # only if still empty: a failed first write


@contextlib.contextmanager
def staged_directory(target, flag: str = "--workdir"):
  """Build a new directory at a hidden sibling path (yielded) and rename it to ``target``
  when the block ends; on any error, remove it. ``target`` must not exist or be empty."""
  target = pathlib.Path(target)
  if target.exists() and (not target.is_dir() or any(target.iterdir())):
    raise WorkdirError(f"{flag}={str(target)!r} is not empty; write into a new directory")
  parent = target.parent
  try:
    parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(describe_os_error(e, "creating", parent)) from None
  building = parent / f".{target.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  failed = True
  try:
    try:
      building.mkdir()
      yield building
      os.replace(building, target)                  # onto nothing, or an empty directory
      failed = False
    except OSError as e:
      where = e.filename and pathlib.Path(os.fsdecode(e.filename))
      if where:
        with contextlib.suppress(ValueError):
          where = target / where.relative_to(building)
      raise WorkdirError(describe_write_error(e, where or target)) from None
    except (ConfigError, ValueError, RuntimeError) as e:
      _rename_in_message(e, building, target)
  finally:
    _remove(building, settle=failed)


def _remove(path: pathlib.Path, settle: bool) -> None:
  """Delete the folder ``path``. ``settle``: after a failed checkpoint write, tensorstore may
  still complete writes it had started, re-creating folders under ``path``; delete again
  until it has stayed absent for a moment (about 0.2 s, at most 2 s)."""
  shutil.rmtree(path, ignore_errors=True)
  if not settle:
    return
  quiet = 0
  for _ in range(40):
    time.sleep(0.05)
    if path.exists():
      shutil.rmtree(path, ignore_errors=True)
      quiet = 0
    else:
      quiet += 1
      if quiet >= 4:
        return


def _rename_in_message(error: Exception, staging: pathlib.Path, final: pathlib.Path):
  """Raise ``error`` again, its message naming ``final`` instead of the staging path (which
  is gone once the error is reported)."""
  text = str(error)
  if str(staging) in text and type(error) in (ValueError, RuntimeError, ConfigError,
                                              WorkdirError):
    raise type(error)(text.replace(str(staging), str(final))) from error
  raise error


__all__ = ["Stage", "check_out", "describe_write_error", "staged", "staged_directory"]
