"""Toy transformers with a known circuit (induction), the ground truth for circuit recovery.

- :mod:`unpack.toy.data`: repeated-segment sequences and the word-level tokenizer.
- :mod:`unpack.toy.train`: the trainer (CPU, deterministic by seed) and the variants.
- :mod:`unpack.toy.groundtruth`: previous-token and induction heads, read off the attention.
- :mod:`unpack.toy.report`: does Unpack recover previous-token -> induction via K?
- :mod:`unpack.toy.cli`: ``unpack toy-train``, ``unpack random-model`` and the options of
  ``unpack report induction`` (``unpack toy-report`` is its alias).

Shipped checkpoints: ``unpack/toy/checkpoints/{attn-only,mlp}-d{64,128}`` and
``attn-only-d128-sparse``, rebuilt bit for bit by
``unpack toy-train --variant all --out /tmp/toy --seed 0 --threads 1`` (then compare the
files with the shipped ones; writing into the package needs ``--overwrite-shipped``).
The toy ladder (:mod:`unpack.toy.ladder`) ships in ``unpack/toy/ladder``.

Nothing is imported here, so the CLI stays light.
"""
