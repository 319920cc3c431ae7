"""Tests for unpack.tasks: IOI (+ ABC controls), induction, user corpora, the CLI.

Two tokenizers: the offline SmolLM2 tokenizer (byte-level BPE) and a word-level
tokenizer built here with ``tokenizers`` (whitespace pre-tokenizer, a ``<bos>``
token, and a vocabulary that lacks a few of the built-in names).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from unpack.cli import main as cli_main
from unpack.errors import InputError
from unpack.tasks import (
    PromptRecord,
    induction,
    ioi,
    load_corpus,
    read_jsonl,
    token_pool,
    write_jsonl,
)
from unpack.tasks.ioi import NAMES, OBJECTS, PLACES, TEMPLATES, usable_names
from unpack.tokens import bos_text, encode

DATA = Path(__file__).parent / "data"
MISSING_NAMES = ("Amanda", "Michelle", "Lily", "Tony")  # left out of the word-level vocab
CORPUS_WORDS = ("The", "capital", "of", "France", "is", "Paris", "London", "Caf")


def wordlevel_tokenizer(extra=()):
    """A word-level tokenizer knowing the template words, most names, places,
    objects, the corpus test words and ``extra``."""
    words = set(CORPUS_WORDS) | set(PLACES) | set(OBJECTS) | set(extra)
    words |= set(NAMES) - set(MISSING_NAMES)
    for t in TEMPLATES:
        words |= set(re.findall(r"\w+|[^\w\s]", re.sub(r"\{\w+\}", " ", t)))
    vocab = {"[UNK]": 0, "<bos>": 1}
    for w in sorted(words):
        vocab[w] = len(vocab)
    tk = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", bos_token="<bos>")


@pytest.fixture(scope="module")
def smol():
    from unpack.loading import load_tokenizer

    try:
        return load_tokenizer("smollm2-135m")
    except InputError as e:
        pytest.fail(f"the SmolLM2 tokenizer is needed: {e}")


@pytest.fixture(scope="module")
def wordlevel():
    return wordlevel_tokenizer()


@pytest.fixture(params=["smollm2", "wordlevel"])
def tok(request, smol, wordlevel):
    return smol if request.param == "smollm2" else wordlevel


def token_str(tokenizer, text, pos):
    ids, _ = encode(tokenizer, text)
    return tokenizer.decode([ids[pos]]).strip()


# ---------------------------------------------------------------- IOI


def test_templates_names_and_orders():
    assert len(TEMPLATES) >= 15
    assert all(
        t.endswith(" to") and {"{N1}", "{N2}", "{S2}"} <= set(re.findall(r"\{\w+\}", t))
        for t in TEMPLATES
    )
    recs = ioi(wordlevel_tokenizer(), 200, seed=0)
    tids = {r.template for r in recs}
    assert {t.rsplit("_", 1)[1] for t in tids} == {"ABBA", "BABA"}
    assert len(tids) >= 30  # most of the 2 x 16 template/order pairs are drawn


def test_ioi_roles_decode_to_names(tok):
    recs = ioi(tok, 40, seed=3, controls=True)
    assert len(recs) == 160
    bos_id = encode(tok, bos_text(tok))[0]
    for r in recs:
        m = r.metadata
        ids, _ = encode(tok, r.text)
        assert ids[:1] == bos_id and r.roles["END"] == len(ids) - 1
        if r.condition.startswith("ioi"):
            assert set(r.roles) == {"IO", "S1", "S2", "END"}
            want = {"IO": m["io"], "S1": m["s"], "S2": m["s"]}
        else:
            assert set(r.roles) == {"A", "B", "C", "END"}
            want = {"A": m["io"], "B": m["s"], "C": m["c"]}
        for role, name in want.items():
            assert token_str(tok, r.text, r.roles[role]) == name, (r.text, role)
        # the order decides which slot comes first
        first = "IO" if r.condition.startswith("ioi") else "A"
        second = "S1" if first == "IO" else "B"
        assert (r.roles[first] < r.roles[second]) == (m["order"] == "ABBA")
        # the target and distractor are the tokens at the matching roles
        tgt, dis = encode(tok, r.target)[0], encode(tok, r.distractor)[0]
        assert len(tgt) == 1 and len(dis) == 1
        at = {
            "ioi_io": ("IO", "S1"),
            "ioi_s": ("S1", "IO"),
            "abc_c": ("C", "A"),
            "abc_b": ("B", "A"),
        }[r.condition]
        assert (tgt[0], dis[0]) == (ids[r.roles[at[0]]], ids[r.roles[at[1]]])


def test_every_name_is_a_single_token(tok, wordlevel):
    recs = ioi(tok, 60, seed=5, controls=True)
    used = {r.metadata[k] for r in recs for k in ("io", "s", "c") if k in r.metadata}
    assert len(used) > 20
    for name in used:
        assert len(encode(tok, " " + name)[0]) == 1, name
    # names the word-level vocabulary lacks are filtered out, never used
    assert set(usable_names(wordlevel)) == set(NAMES) - set(MISSING_NAMES)
    if tok is wordlevel:
        assert not used & set(MISSING_NAMES)
    # multi-token names are dropped ("Megan" is two SmolLM2 tokens, "Mary-Jane" three words)
    assert usable_names(
        tok, ["Mary", "Megan" if tok is not wordlevel else "Amanda", "Mary-Jane", "John"]
    ) == ["Mary", "John"]
    recs = ioi(tok, 20, seed=0, names=["Mary", "Mary-Jane", "John", "Megan", "Alice"])
    assert {r.metadata["io"] for r in recs} | {r.metadata["s"] for r in recs} == {
        "Mary",
        "John",
        "Alice",
    }


def test_controls_differ_only_at_s2(tok):
    recs = ioi(tok, 30, seed=11, controls=True)
    groups = {}
    for r in recs:
        groups.setdefault(r.group, []).append(r)
    assert len(groups) == 30
    for g in groups.values():
        assert [r.condition for r in g] == ["ioi_io", "ioi_s", "abc_c", "abc_b"]
        assert len({r.template for r in g}) == 1
        io_rec, abc_rec = g[0], g[2]
        a, b = encode(tok, io_rec.text)[0], encode(tok, abc_rec.text)[0]
        assert len(a) == len(b)
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        assert diff == [io_rec.roles["S2"]] == [abc_rec.roles["C"]]
        assert (abc_rec.roles["A"], abc_rec.roles["B"]) == (io_rec.roles["IO"], io_rec.roles["S1"])
    # the ioi_io prompts are the same with or without controls
    plain = ioi(tok, 30, seed=11)
    assert [r.to_json() for r in plain] == [r.to_json() for r in recs if r.condition == "ioi_io"]


def test_bos_prefix_shifts_positions(tok):
    with_bos = ioi(tok, 10, seed=2)
    without = ioi(tok, 10, seed=2, bos=False)
    bos = bos_text(tok)
    assert bos and len(encode(tok, bos)[0]) == 1
    for a, b in zip(with_bos, without):
        assert a.text == bos + b.text
        assert {k: v - 1 for k, v in a.roles.items()} == b.roles
        assert token_str(tok, b.text, b.roles["IO"]) == b.metadata["io"]


def test_ioi_deterministic_by_seed(smol, tmp_path):
    write_jsonl(ioi(smol, 50, seed=7, controls=True), tmp_path / "a.jsonl")
    write_jsonl(ioi(smol, 50, seed=7, controls=True), tmp_path / "b.jsonl")
    write_jsonl(ioi(smol, 50, seed=8, controls=True), tmp_path / "c.jsonl")
    a, b, c = ((tmp_path / f"{x}.jsonl").read_bytes() for x in "abc")
    assert a == b
    ta = [json.loads(x)["text"] for x in a.splitlines()]
    tc = [json.loads(x)["text"] for x in c.splitlines()]
    assert sum(x != y for x, y in zip(ta, tc)) > 150


def test_ioi_bad_input(wordlevel):
    with pytest.raises(InputError, match="n="):
        ioi(wordlevel, 0, seed=0)
    with pytest.raises(InputError, match="names="):
        ioi(wordlevel, 5, seed=0, names=["Mary", "Zorblax", "Quixa"])


def test_record_json_round_trip(smol, tmp_path):
    recs = ioi(smol, 5, seed=1, controls=True) + induction(smol, 3, seed=1)
    for r in recs:
        line = r.to_json()
        assert PromptRecord.from_json(line) == r
        assert list(json.loads(line)) == sorted(json.loads(line))
    write_jsonl(recs, tmp_path / "r.jsonl")
    assert read_jsonl(tmp_path / "r.jsonl") == recs
    with pytest.raises(InputError, match="unknown fields"):
        PromptRecord.from_json('{"task": "x", "text": "a", "target": "b", "colour": 1}')


# ---------------------------------------------------------------- induction


def toy_tokenizer(n=100):
    vocab = {"[UNK]": 0, **{f"t{i}": i + 1 for i in range(n)}}
    tk = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


@pytest.mark.parametrize("which", ["smollm2", "wordlevel", "toy"])
def test_induction_roles(which, smol, wordlevel):
    tk = {"smollm2": smol, "wordlevel": wordlevel, "toy": toy_tokenizer()}[which]
    recs = induction(tk, 20, seed=4, seg_len=8, repeat_len=5, prefix_len=3)
    for r in recs:
        ids, _ = encode(tk, r.text)
        seg = [ids[r.roles[f"first_{j}"]] for j in range(8)]
        assert len(set(seg)) == 8
        assert [ids[r.roles[f"second_{j}"]] for j in range(5)] == seg[:5]
        assert r.roles["END"] == r.roles["second_4"] == len(ids) - 1
        assert encode(tk, r.target)[0] == [seg[5]] == [ids[r.roles["first_5"]]]
        assert r.roles["second_0"] == r.roles["first_7"] + 1
        n_bos = len(encode(tk, bos_text(tk))[0])
        assert len(ids) == n_bos + 3 + 8 + 5
        assert r.metadata["tokens"][3:] == [tk.decode([i]).strip() for i in ids[n_bos + 3 :]]


def test_induction_toy_pool_and_determinism(tmp_path):
    tk = toy_tokenizer()
    assert token_pool(tk) == [f"t{i}" for i in range(100)]
    a = induction(tk, 30, seed=1)
    assert [r.to_json() for r in a] == [r.to_json() for r in induction(tk, 30, seed=1)]
    assert [r.text for r in a] != [r.text for r in induction(tk, 30, seed=2)]
    assert a[0].text.startswith(" t") and a[0].roles["first_0"] == 0  # no BOS token here
    # an explicit pool is used as given and checked
    pool = [f"t{i}" for i in range(10, 22)]
    for r in induction(tk, 10, seed=0, seg_len=6, pool=pool):
        assert set(r.metadata["tokens"]) <= set(pool)
    with pytest.raises(InputError, match="induction pool"):
        induction(tk, 3, seed=0, pool=["t1", "t2", "nonsense", "t4"])
    with pytest.raises(InputError, match="single-token words"):
        induction(tk, 3, seed=0, seg_len=10, pool=["t1", "t2", "t3"])


# ---------------------------------------------------------------- corpora

EXPECTED_BAD = {
    "jsonl": [(3, "missing text"), (4, "unknown token"), (6, "outside the text"), (7, "UTF-8")],
    "csv": [(3, "missing text"), (5, "unknown token"), (6, "outside the text"), (7, "UTF-8")],
}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_corpus_good_and_bad_rows(fmt, wordlevel):
    path = DATA / f"tasks_corpus.{fmt}"
    recs, errors = load_corpus(path, wordlevel)
    assert len(recs) == 3
    assert [(e.line, e.file) for e in errors] == [(n, str(path)) for n, _ in EXPECTED_BAD[fmt]]
    for e, (_, reason) in zip(errors, EXPECTED_BAD[fmt]):
        assert reason in e.reason, str(e)
    r0, r1, r2 = recs
    assert (r0.target, r0.distractor, r0.metadata) == (" Paris", " London", {"source": "demo"})
    assert token_str(wordlevel, r0.text, r0.roles["subject"]) == "France"
    assert r0.roles["END"] == len(encode(wordlevel, r0.text)[0]) - 1
    assert token_str(wordlevel, r1.text, r1.roles["IO"]) == "Mary"
    assert r2.distractor == " John" and r2.task == ("ioi" if fmt == "jsonl" else "corpus")
    if fmt == "jsonl":
        assert token_str(wordlevel, r1.text, r1.roles["S2"]) == "John"
        assert r2.metadata == {"lang": "en"} and r2.group == "tasks_corpus.jsonl:8"
    else:
        assert r2.metadata == {"template": "t1"}


def test_corpus_roles_on_smollm2_with_bos(smol, tmp_path):
    p = tmp_path / "c.jsonl"
    text = "When Mary and John went to the store, John gave a drink to"
    p.write_text(
        json.dumps(
            {
                "text": text,
                "target": " Mary",
                "distractor": " John",
                "roles": {"IO": 5, "S1": 14, "S2": text.rindex("John"), "first": {"token": 0}},
            }
        )
        + "\n"
    )
    for bos in (False, True):
        (r,), errors = load_corpus(p, smol, bos=bos)
        assert errors == []
        assert r.text == (bos_text(smol) if bos else "") + text
        got = {k: token_str(smol, r.text, v) for k, v in r.roles.items()}
        assert got == {"IO": "Mary", "S1": "John", "S2": "John", "first": "When", "END": "to"}
        assert r.roles["S2"] > r.roles["S1"]


def test_corpus_file_errors(wordlevel, tmp_path):
    with pytest.raises(InputError, match="no such corpus file"):
        load_corpus(tmp_path / "missing.jsonl", wordlevel)
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(InputError, match=".jsonl or .csv"):
        load_corpus(tmp_path / "c.txt", wordlevel)
    (tmp_path / "c.csv").write_text("prompt,answer\nParis is, France\n")
    with pytest.raises(InputError, match=r"lacks column\(s\) \['text', 'target'\]"):
        load_corpus(tmp_path / "c.csv", wordlevel)
    recs, errors = load_corpus(DATA / "tasks_corpus_all_bad.jsonl", wordlevel)
    assert recs == [] and [e.line for e in errors] == [1, 2, 3]
    assert [
        "missing text" in errors[0].reason,
        "missing target" in errors[1].reason,
        "not valid JSON" in errors[2].reason,
    ] == [True, True, True]


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def wordlevel_dir(tmp_path_factory):
    """The word-level tokenizer saved as a model directory `--model` can load."""
    d = tmp_path_factory.mktemp("wordlevel_model")
    wordlevel_tokenizer().save_pretrained(str(d))
    (d / "config.json").write_text('{"model_type": "llama"}')
    return str(d)


def test_cli_corpus(wordlevel_dir, tmp_path, capsys):
    out = tmp_path / "good.jsonl"
    rc = cli_main(
        [
            "tasks",
            "corpus",
            str(DATA / "tasks_corpus.jsonl"),
            "--model",
            wordlevel_dir,
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0
    assert len(read_jsonl(out)) == 3
    for line, reason in EXPECTED_BAD["jsonl"]:
        assert re.search(rf"tasks_corpus\.jsonl:{line}: .*{reason}", err), err
    rc = cli_main(
        [
            "tasks",
            "corpus",
            str(DATA / "tasks_corpus_all_bad.jsonl"),
            "--model",
            wordlevel_dir,
            "--out",
            str(tmp_path / "none.jsonl"),
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "no valid row" in err and "tasks_corpus_all_bad.jsonl:3" in err


def test_cli_ioi_and_induction(tmp_path, capsys):
    def run(*args):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}.jsonl"
        assert cli_main(["tasks", *args, "--model", "smollm2-135m", "--out", str(out)]) == 0
        return out.read_bytes()

    a = run("ioi", "--n", "20", "--seed", "3", "--controls")
    assert a == run("ioi", "--n", "20", "--seed", "3", "--controls")
    assert a != run("ioi", "--n", "20", "--seed", "4", "--controls")
    lines = [json.loads(x) for x in a.splitlines()]
    assert len(lines) == 80
    assert set(lines[0]) == {
        "text",
        "target",
        "distractor",
        "roles",
        "template",
        "group",
        "condition",
        "metadata",
        "task",
    }
    # the CLI writes exactly what the Python API returns
    from unpack.loading import load_tokenizer

    api = ioi(load_tokenizer("smollm2-135m"), 20, seed=3, controls=True)
    assert a == "".join(r.to_json() + "\n" for r in api).encode()
    b = run("induction", "--n", "5", "--seed", "1", "--seg-len", "6", "--no-bos")
    assert [json.loads(x)["template"] for x in b.splitlines()] == ["induction_p0_l6_r5"] * 5
    assert (
        cli_main(
            [
                "tasks",
                "ioi",
                "--model",
                "smollm2-135m",
                "--n",
                "0",
                "--out",
                str(tmp_path / "x.jsonl"),
            ]
        )
        == 2
    )
    assert "n=0" in capsys.readouterr().err


# ---------------------------------------------------------------- a real model


def test_smollm2_prefers_io_over_s():
    """Acceptance 4: the templates are natural enough that SmolLM2 predicts IO over S."""
    from unpack.loading import load_model

    t0 = time.time()
    try:
        model, tok = load_model("smollm2-135m")
    except InputError as e:
        pytest.fail(f"the SmolLM2 model is needed: {e}")
    recs = ioi(tok, 100, seed=0)
    encs = [encode(tok, r.text)[0] for r in recs]
    ids = torch.full((len(encs), max(map(len, encs))), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encs):  # right padding: pads never reach earlier positions
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    diffs = []
    with torch.no_grad():
        for b in range(0, len(recs), 25):
            logits = model(ids[b : b + 25], attention_mask=mask[b : b + 25]).logits
            for i, r in enumerate(recs[b : b + 25]):
                io, s = encode(tok, r.target)[0][0], encode(tok, r.distractor)[0][0]
                diffs.append((logits[i, r.roles["END"], io] - logits[i, r.roles["END"], s]).item())
    rate = sum(d > 0 for d in diffs) / len(diffs)
    print(
        f"SmolLM2 IOI: IO - S logit difference > 0 on {rate:.0%} of {len(diffs)} prompts, "
        f"mean {sum(diffs) / len(diffs):+.2f} ({time.time() - t0:.1f} s)"
    )
    assert rate >= 0.85
