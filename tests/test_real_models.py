"""A real model fetched by ``unpack models fetch`` (docs/MODELS.md), loaded by its
alias: the file is intact, the model does IOI, and every §9 invariant holds
(docs/METHOD.md §9). ``.ci/setup`` fetches it; when it is missing this FAILS,
naming the command."""

import torch

from unpack import models
from unpack.loading import load_model
from unpack.tokens import encode
from unpack.validate import validate_model

ALIAS = "qwen2.5-coder-0.5b"
IOI = "When Mary and John went to the store, John gave a drink to"


def test_fetched_qwen_by_alias_does_ioi_and_passes_every_invariant():
    if not models.gguf_path(ALIAS).is_file():
        raise AssertionError(
            f"{ALIAS} is not fetched here ({models.gguf_path(ALIAS)}): run "
            f"`unpack models fetch {ALIAS}` (.ci/setup does)"
        )
    ok, why = models.verify(ALIAS)
    assert ok, why
    model, tok = load_model(ALIAS)
    assert (model.config.model_type, model.config.num_hidden_layers) == ("qwen2", 24)
    with torch.no_grad():
        logits = model(torch.tensor([encode(tok, IOI)[0]])).logits[0, -1]
    mary, john = (encode(tok, w)[0][0] for w in (" Mary", " John"))
    assert logits.softmax(-1)[mary] > 0.5 and logits[mary] - logits[john] > 2
    checks = validate_model(model, tok, texts=[IOI])
    assert len(checks) == 9 and all(c.ok for c in checks), "\n".join(map(str, checks))
