"""A corpus of hostile strings: stored text that every output must show as data
(docs/SECURITY.md; tests/test_escape.py, tests/test_app_hostile_browser.py).

Script, event handlers, comment openers, backticks, Markdown links and images,
Streamlit directives and math, TeX control sequences, newlines, '%', '}', NUL,
unicode. EVIL is a host that must never be asked for."""

EVIL = "evil.invalid"
CORPUS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(document.title.length)>",
    "__DATA__ __TITLE__ {title} {data}",
    "<!--<script> The dog sat on the",
    "</script><script>alert(2)</script>",
    '"><svg onload=alert(3)>',
    "' onmouseover='alert(4)",
    f'<a href="http://{EVIL}/a">a link</a> <b>bold</b>',
    f"`code` ![t](http://{EVIL}:18999/pixel.png) [site](http://{EVIL}/)",
    f"www.{EVIL} http://{EVIL}/auto <http://{EVIL}/angle> me@{EVIL} mailto:me@{EVIL}",
    "**bold** _em_ # head :red[red] $x^2$ | a | b |",
    "\\input /etc/hostname \\write18{touch /tmp/pwned} \\def\\x{y}",
    "line one\n\\input{/etc/passwd}\n% comment } { $ & # ^ _ ~",
    "nul\x00here tab\tcr\r end",
    "ünïcødé — 名前 🐈 \u2028\u2029 \u202e",
]
HOSTILE = " ".join(CORPUS)
