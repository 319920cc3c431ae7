"""What an ingest says about a corpus: a failed row by its file and line, a bad
root once, and a UTF-16 file read (with its byte-order mark) or refused with
the fix (without it)."""

from __future__ import annotations

import pytest


ROWS = [("w1 w2 w3", " w4", ""), ("w5 w6 w7", " w8", "attn_9_head_0@END"), ("w2 w3 w4", " w5", "")]


def _csv(rows) -> str:
    return "text,target,root\n" + "".join(f'"{t}","{g}","{r}"\n' for t, g, r in rows)


def test_a_failed_row_is_named_by_file_and_line_and_its_root_once(word_gpt2_dir, tmp_path, capsys):
    from unpack.cli import main

    model = word_gpt2_dir
    corpus = tmp_path / "c.csv"
    corpus.write_text(_csv(ROWS))
    assert (
        main(
            [
                "ingest",
                "--model",
                model,
                "--corpus",
                str(corpus),
                "--db",
                str(tmp_path / "s.duckdb"),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2 ok, 1 failed" in out, out
    assert f"failed: {corpus}:3 'w5 w6 w7': root 'attn_9_head_0@END': no component" in out, out
    assert out.count("root 'attn_9_head_0@END'") == 1, out


@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
def test_a_wide_csv_with_a_byte_order_mark_reads_as_utf8_does(codec, tmp_path):
    from tests.models import word_tokenizer
    from unpack.tasks import load_corpus

    tok = word_tokenizer()
    plain, wide = tmp_path / "plain.csv", tmp_path / "wide.csv"
    plain.write_text(_csv(ROWS[:1] + ROWS[2:]), encoding="utf-8")
    wide.write_text(_csv(ROWS[:1] + ROWS[2:]), encoding=codec)  # with its byte-order mark
    (want, bad1), (got, bad2) = load_corpus(plain, tok), load_corpus(wide, tok)
    assert not bad1 and not bad2 and len(got) == 2
    assert [r.to_json() for r in got] == [
        r.to_json().replace("plain.csv", "wide.csv") for r in want
    ]


def test_a_utf16_csv_without_its_mark_is_refused_with_the_fix(tmp_path):
    from tests.models import word_tokenizer
    from unpack.errors import InputError
    from unpack.tasks import load_corpus

    wide = tmp_path / "wide.csv"
    wide.write_bytes(_csv(ROWS).encode("utf-16-le"))
    with pytest.raises(InputError) as e:
        load_corpus(wide, word_tokenizer())
    assert "UTF-16" in str(e.value) and "save it as UTF-8" in str(e.value)
    assert "header lacks" not in str(e.value)
