"""``unpack tasks ioi|induction|corpus``: write prompt records as JSONL.

Exit codes: 0 records written; 2 bad input (including a corpus in which no
row is valid). Bad corpus rows are listed on stderr as ``file:line: reason``.
"""

from __future__ import annotations

from ..flags import add_command, add_flags

_EPILOG = (
    "Each output line is one JSON object with text, target, distractor, roles "
    "(role -> token position, BOS prefix included), template, group, condition, "
    "metadata. The same seed gives byte-identical output."
)


_TASKS_TEXT = """\
Write prompt records (IOI with ABC controls, induction, or a user corpus) as JSONL for
`unpack ingest` and the Python API.
"""


_IOI_TEXT = """\
IOI prompts (ABBA and BABA orders), roles IO, S1, S2, END. --controls adds, per prompt,
the conditions ioi_s, abc_c and abc_b with the same group id (docs/METHOD.md §10).
"""


_INDUCTION_TEXT = """\
Random-token prompts whose segment repeats; roles first_j, second_j, END; target = the
token after the first occurrence of the last token.
"""


_CORPUS_TEXT = """\
Read a JSONL or CSV corpus (text, target, optional distractor, roles, metadata), report
bad rows with file, line and reason, write the good ones.
"""


def register(subparsers) -> None:
    """Add the ``tasks`` subcommand and its ioi, induction and corpus subcommands."""
    p = add_command(
        subparsers,
        "tasks",
        "generate IOI / induction prompts or validate a corpus, as JSONL",
        _TASKS_TEXT,
        epilog=_EPILOG,
    )
    sub = p.add_subparsers(dest="task", metavar="TASK", required=True)

    def common(q, generated=True):
        add_flags(
            q,
            "model",
            *(("n", "seed") if generated else ()),
            "out",
            model=dict(
                help="model whose tokenizer decides tokens and positions "
                "(local directory, .gguf file, hub name, or smollm2-135m)"
            ),
            out=dict(metavar=None, help="output JSONL file ('-' for stdout)"),
        )
        q.set_defaults(func=handler)

    q = add_command(sub, "ioi", "indirect object identification prompts", _IOI_TEXT, epilog=_EPILOG)
    common(q)
    q.add_argument(
        "--controls",
        action="store_true",
        help="also write the ioi_s, abc_c and abc_b variants of each prompt",
    )
    add_flags(q, "no-bos")

    q = add_command(
        sub, "induction", "random tokens with a repeated segment", _INDUCTION_TEXT, epilog=_EPILOG
    )
    common(q)
    q.add_argument("--seg-len", type=int, default=10, help="segment length (default 10)")
    q.add_argument(
        "--repeat-len",
        type=int,
        default=None,
        help="how much of the segment repeats (default seg-len - 1)",
    )
    q.add_argument(
        "--prefix-len",
        type=int,
        default=0,
        help="random filler tokens before the segment (default 0)",
    )
    q.add_argument(
        "--pool",
        default=None,
        help="file with one word per line to draw tokens from "
        "(default: every single-token word of the vocabulary)",
    )
    add_flags(q, "no-bos")

    q = add_command(sub, "corpus", "validate a user JSONL/CSV corpus", _CORPUS_TEXT, epilog=_EPILOG)
    q.add_argument("file", help="the corpus (.jsonl or .csv)")
    common(q, generated=False)
    q.add_argument(
        "--bos", action="store_true", help="prefix each text with the beginning-of-sequence token"
    )


def handler(args) -> int:
    """Build the records for ``args.task``, write them, return the exit code."""
    import sys

    from ..errors import InputError
    from ..loading import load_tokenizer
    from . import induction, ioi, load_corpus, write_jsonl

    tok = load_tokenizer(args.model)
    if args.task == "ioi":
        records = ioi(tok, args.n, args.seed, controls=args.controls, bos=not args.no_bos)
    elif args.task == "induction":
        pool = None
        if args.pool:
            try:
                with open(args.pool, encoding="utf-8") as f:
                    pool = [w.strip() for w in f if w.strip()]
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(
                    f"--pool {args.pool}: cannot read it ({e}); give a UTF-8 "
                    "text file with one word per line"
                ) from None
        records = induction(
            tok,
            args.n,
            args.seed,
            seg_len=args.seg_len,
            repeat_len=args.repeat_len,
            prefix_len=args.prefix_len,
            bos=not args.no_bos,
            pool=pool,
        )
    else:
        records, errors = load_corpus(args.file, tok, bos=args.bos)
        for e in errors:
            print(f"unpack tasks corpus: bad row: {e}", file=sys.stderr)
        if not records:
            print(
                f"unpack tasks corpus: error: no valid row in {args.file} "
                f"({len(errors)} bad); fix the rows listed above",
                file=sys.stderr,
            )
            return 2
        if errors:
            print(
                f"unpack tasks corpus: {len(records)} rows loaded, {len(errors)} skipped",
                file=sys.stderr,
            )
    if args.out == "-":
        write_jsonl(records, sys.stdout)
    else:
        write_jsonl(records, args.out)
        print(f"wrote {len(records)} records to {args.out}", file=sys.stderr)
    return 0
