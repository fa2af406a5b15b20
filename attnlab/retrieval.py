"""``python -m attnlab.retrieval``: the retrieval study (``attnlab.cli.retrieval``)."""

if __name__ == "__main__":
  from attnlab.cli import common
  from attnlab.cli.retrieval import define_flags, main
  common.run(main, define_flags)
