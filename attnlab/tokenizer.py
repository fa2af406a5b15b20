"""``python -m attnlab.tokenizer``: train a BPE tokenizer.json (``attnlab.cli.tokenizer``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.tokenizer import define_flags, main
  common.run(main, define_flags)
