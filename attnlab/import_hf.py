"""``python -m attnlab.import_hf``: import a Hugging Face checkpoint (``attnlab.cli.import_hf``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.import_hf import define_flags, main
  common.run(main, define_flags)
