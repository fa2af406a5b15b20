"""The architecture's rules, checked on the code itself.

- Dependencies point one way (``.importlinter``, checked by import-linter: layers, the
  entry points' independence, kernels reached only through the impl registry, no cycles).
- Nothing outside a registry entry decides things about an axis by its name: no module
  compares a config's ``kind`` / ``pattern`` / ``impl`` with a literal name, and the old
  hand-kept lists are gone.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "attnlab"


def test_import_contracts_hold():
  importlinter_cli = pytest.importorskip("importlinter.cli")
  code = importlinter_cli.lint_imports(config_filename=str(REPO / ".importlinter"),
                                       no_cache=True)
  assert code == 0, "lint-imports found a broken contract (run `lint-imports` for details)"


def test_a_broken_contract_is_detected(tmp_path, monkeypatch):
  """The checker is live: a module of attention importing positional breaks the layers."""
  importlinter_cli = pytest.importorskip("importlinter.cli")
  import shutil
  shutil.copytree(PACKAGE, tmp_path / "attnlab")
  shutil.copytree(REPO / "pallas_kernels", tmp_path / "pallas_kernels")
  (tmp_path / "attnlab" / "attention" / "leak.py").write_text("from attnlab import positional\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  for name in [m for m in list(__import__("sys").modules) if m.split(".")[0] in
               ("attnlab", "pallas_kernels")]:
    monkeypatch.delitem(__import__("sys").modules, name)
  code = importlinter_cli.lint_imports(config_filename=str(REPO / ".importlinter"),
                                       no_cache=True)
  assert code != 0


def test_every_entry_point_is_in_the_contracts():
  """Each ``attnlab/cli/<name>.py`` (but ``common``) is a runner and its shim
  ``attnlab/<name>.py`` is in the top layer, so a new entry point cannot slip past both."""
  import configparser
  contracts = configparser.ConfigParser()
  contracts.read(REPO / ".importlinter")
  top = {m.strip() for m in
         contracts["importlinter:contract:layers"]["layers"].strip().splitlines()[0].split("|")}
  runners = set(contracts["importlinter:contract:runners"]["modules"].split())
  names = sorted(p.stem for p in (PACKAGE / "cli").glob("*.py")
                 if p.stem not in ("__init__", "common"))
  assert names and all((PACKAGE / f"{n}.py").is_file() for n in names)
  assert {f"attnlab.{n}" for n in names} <= top, sorted({f"attnlab.{n}" for n in names} - top)
  assert {f"attnlab.cli.{n}" for n in names} == runners, sorted(
      {f"attnlab.cli.{n}" for n in names} ^ runners)


AXIS_ATTRIBUTES = {"kind", "pattern", "impl"}
REMOVED = {"RANDOMIZABLE", "STREAMABLE_POSITIONS", "_ATTENTION_INT_MINIMUM", "_local_heads",
           "_pallas_decode_request", "_static_prefill", "bias_table_shape"}


def _sources():
  for path in sorted(PACKAGE.rglob("*.py")):
    yield path, ast.parse(path.read_text(), str(path))


def _axis_name(node) -> str | None:
  """``x.kind`` / ``x["pattern"]`` / ``x.get("impl", ...)`` -> the axis attribute, else None."""
  if isinstance(node, ast.Attribute) and node.attr in AXIS_ATTRIBUTES:
    return node.attr
  if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
      and node.slice.value in AXIS_ATTRIBUTES):
    return node.slice.value
  if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
      and node.func.attr == "get" and node.args and isinstance(node.args[0], ast.Constant)
      and node.args[0].value in AXIS_ATTRIBUTES):
    return node.args[0].value
  return None


def _literals(node):
  if isinstance(node, ast.Constant) and isinstance(node.value, str):
    return [node.value]
  if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
    return [e.value for e in node.elts if isinstance(e, ast.Constant)]
  return []


def test_no_module_switches_on_an_axis_name():
  offenders = []
  for path, tree in _sources():
    for node in ast.walk(tree):
      if not isinstance(node, ast.Compare):
        continue
      sides = [node.left, *node.comparators]
      if not any(_axis_name(s) for s in sides):
        continue
      names = [v for s in sides for v in _literals(s) if v != "auto"]   # 'auto' is no entry
      if names:
        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} compares with {names}")
  assert not offenders, "decide from the registry entry's declarations instead:\n" + "\n".join(
      offenders)


def test_the_hand_kept_lists_are_gone():
  found = []
  for path, tree in _sources():
    for node in ast.walk(tree):
      name = (node.id if isinstance(node, ast.Name) else node.name
              if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
              node.attr if isinstance(node, ast.Attribute) else None)
      if name in REMOVED:
        found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
  assert not found, "\n".join(found)


def test_the_checks_would_catch_a_name_switch():
  """The AST rule fires on the shapes of switch the axes issue removed."""
  for source in ('if cfg.pattern == "sliding_window": pass',
                 'ok = p.kind in ("alibi", "t5")',
                 'ok = att.get("impl") != "pallas"'):
    tree = ast.parse(source)
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert compares and any(_axis_name(s) for c in compares for s in [c.left, *c.comparators])
