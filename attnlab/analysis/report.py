"""Attention maps, head metrics and an interactive viewer for a trained run (the library
behind ``python -m attnlab.analyze --workdir=runs/rope --text="..." --out=analysis/rope``).

Writes into ``out``:
  ``attention_grid.png``   every (layer, head) map on the text, layers as rows;
  ``heads/L{l}_H{h}.png``  each head's map with token labels;
  ``metrics.json``, ``metrics.md``  per-head entropy, mean distance, sink mass,
      previous-token, diagonal and induction scores, and a role per head;
  ``viewer.html``          pick a layer and head, hover a token to see where it attends
      (self-contained: no network resources).

Scores other than induction are measured on the text; the induction score on
``--induction_batch`` sequences of random printable bytes repeated once. The files are
written all or none (``attnlab.outputs``): a failed write leaves an earlier analysis in
``out`` as it was.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from tqdm import tqdm

from attnlab import data, outputs, positional
from attnlab.analysis import capture, metrics, plots, viewer
from attnlab.models.common import attention_settings
from attnlab.registry import ConfigError

PRINTABLE_LOW, PRINTABLE_HIGH = 32, 127   # induction sequences use bytes in [32, 127)


def check_inputs(workdir: str | None, text: str | None, out: str | None, *,
                 induction_batch: int = 8, sink_k: int = 1, seed: int = 0) -> None:
  """Raise ``ConfigError`` naming the flag and value when an input cannot be analysed."""
  if not workdir:
    raise ConfigError("--workdir is required (a training workdir with config.json)")
  if not (pathlib.Path(workdir) / "config.json").is_file():
    raise ConfigError(f"--workdir={workdir!r} is not a training workdir: "
                      f"{pathlib.Path(workdir) / 'config.json'} does not exist")
  if text is None or not text:
    raise ConfigError(f"--text={text!r} is empty; give at least 2 characters to analyse")
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    raise ConfigError(f"--text={text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8 "
                      f"text; give UTF-8 text") from None
  if not out:
    raise ConfigError("--out is required (the folder for the PNGs, tables and viewer)")
  outputs.check_out(out)
  for flag, value, low, what in (
      ("--induction_batch", induction_batch, 1, "repeated random sequences to score"),
      ("--sink_k", sink_k, 1, "first tokens whose attention counts as sink mass"),
      ("--seed", seed, 0, "seed of the random induction sequences")):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ConfigError(f"{flag}={value!r} must be an integer >= {low} ({what})")


def encode_text(text: str, cfg) -> np.ndarray:
  """Tokens of ``text`` (int32 [1, n]; the run's tokenizer), checked against the model's limit.

  The limit is ``data.seq_len``, the length the model was trained at (and the position
  table's size, for learned positions).
  """
  tokens = data.get_tokenizer(cfg.data).encode(text).astype(np.int32)
  limit = cfg.data.seq_len
  if len(tokens) < 2:
    raise ConfigError(f"--text={text!r} has {len(tokens)} token; need at least 2")
  if len(tokens) > limit:
    raise ConfigError(f"--text has {len(tokens)} tokens ({text[:40]!r}...), more than the "
                      f"model's limit of {limit} (data.seq_len it was trained at); shorten it")
  positional.check_length(cfg.model.position, len(tokens), "--text length")
  return tokens[None]


def default_period(cfg) -> int:
  """Induction period: half the training length, at most the printable range without repeats."""
  return max(1, min(cfg.data.seq_len // 2, PRINTABLE_HIGH - PRINTABLE_LOW))


def analyze(workdir, text: str, out, *, induction_batch: int = 8, sink_k: int = 1,
            seed: int = 0, head_pngs: bool = True, progress: bool = True) -> dict:
  """Run the whole analysis; returns {"records", "files", "step"}."""
  check_inputs(str(workdir) if workdir else workdir, text, str(out) if out else out,
               induction_batch=induction_batch, sink_k=sink_k, seed=seed)
  cfg, model, params, step = capture.restore_model(workdir)
  capture.check_capturable(cfg.model)
  tokens = encode_text(text, cfg)

  _, text_maps = capture.capture_attention(model, params, tokens)       # [L, 1, H, n, n]
  period = default_period(cfg)
  rng = np.random.default_rng(seed)
  rep = metrics.induction_tokens(rng, induction_batch, period, PRINTABLE_HIGH, PRINTABLE_LOW)
  _, rep_maps = capture.capture_attention(model, params, rep)
  learned_sinks = attention_settings(cfg.model.attention).sink_logit != "none"
  records = metrics.head_metrics(text_maps, rep_maps, period, sink_k, learned_sinks)

  maps = text_maps[:, 0]                                                 # [L, H, n, n]
  tokenizer = data.get_tokenizer(cfg.data)
  byte_level = isinstance(tokenizer, data.ByteTokenizer)
  labels = ([plots.token_label(int(t)) for t in tokens[0]] if byte_level
            else tokenizer.labels(tokens[0]))
  with outputs.staged(out) as stage:        # every file or none (an earlier set stays whole)
    stage.write_text("metrics.json", json.dumps(
        {"workdir": str(workdir), "step": step, "text": text, "induction_period": period,
         "induction_batch": induction_batch, "sink_k": sink_k, "heads": records}, indent=1))
    stage.write_text(
        "metrics.md",
        f"# Attention heads of {workdir} (step {step})\n\nText: {len(tokens[0])} tokens. "
        f"Induction score: {induction_batch} sequences of {period} random tokens (ids of "
        f"printable bytes), repeated once.\n\n" + metrics.markdown_table(records))
    plots.plot_grid(maps, stage.path("attention_grid.png"),
                    f"{pathlib.Path(workdir).name}: attention on the text")
    if head_pngs:
      pairs = [(l, h) for l in range(maps.shape[0]) for h in range(maps.shape[1])]
      for l, h in tqdm(pairs, desc="head plots", disable=not progress):
        plots.plot_head(maps[l, h], labels, stage.path(f"heads/L{l}_H{h}.png"),
                        f"layer {l}, head {h}")
    shown = [viewer_token(int(t)) for t in tokens[0]] if byte_level else labels
    viewer.write_viewer(maps, shown, stage.path("viewer.html"),
                        f"attnlab attention: {pathlib.Path(workdir).name}, step {step}")
  return {"records": records, "files": stage.files(), "step": step}


def viewer_token(token: int) -> str:
  """Display text of a byte token in the viewer: printable ASCII as itself, others escaped."""
  return chr(token) if 32 <= token < 127 else plots.token_label(token)
