"""After code moved: rewrite the line numbers of docs/FORMULAS.md's rows to their
functions' current definitions (it never changes which function a row names).
From the repository root::

    python -m tests.scripts.fix_formulas
"""

import sys

from tests.formulas import fix

if __name__ == "__main__":
    sys.exit(fix())
