"""``python -m attnlab.import_hf`` (or ``attnlab-import-hf``): import a Hugging Face checkpoint
(``attnlab.cli.import_hf``)."""


def run() -> None:
  """The ``attnlab-import-hf`` console script (setup.cfg's entry points)."""
  from attnlab.cli import common
  from attnlab.cli.import_hf import define_flags, main
  common.run(main, define_flags)


if __name__ == "__main__":
  run()
