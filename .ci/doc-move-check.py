#!/usr/bin/env python3
"""Checks that a move of documentation lost nothing: every sentence of prose, every table row
and every code line of an old file (a git revision's README.md by default) appears, whitespace
aside, in README.md, ARCHITECTURE.md or docs/*.md as they are now. Prints what it cannot find,
so each miss can be judged (an intended edit, or something lost).

    python3 .ci/doc-move-check.py [REVISION[:PATH]]     # default: the last commit's README.md
"""
import glob
import re
import subprocess
import sys

spec = sys.argv[1] if len(sys.argv) > 1 else "HEAD~1:README.md"
if ":" not in spec:
    spec += ":README.md"
old = subprocess.run(["git", "show", spec], check=True, capture_output=True, text=True).stdout


def norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


new = norm(" ".join(open(p, encoding="utf-8").read()
                    for p in ["README.md", "ARCHITECTURE.md", *sorted(glob.glob("docs/*.md"))]))

pieces = []  # (line number, text)
in_code = False
para, para_line = [], 0


def flush():
    global para
    if para:
        text = norm(" ".join(para))
        # Sentences: split after . ; or : followed by a space and a capital, backtick or bracket.
        for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z`(*\[])", text):
            pieces.append((para_line, sentence))
    para = []


for n, line in enumerate(old.split("\n"), 1):
    if line.startswith("```"):
        flush()
        in_code = not in_code
        continue
    if in_code or line.startswith("|"):
        if line.strip():
            pieces.append((n, norm(line)))
        continue
    stripped = line.strip()
    if not stripped:
        flush()
        continue
    if stripped.startswith("#"):
        flush()
        pieces.append((n, norm(stripped.lstrip("#"))))
        continue
    if re.match(r"^[-*] ", stripped):
        flush()
        stripped = stripped[2:]
    if not para:
        para_line = n
    para.append(stripped)
flush()

missing = [(n, p) for n, p in pieces if p and p not in new]
for n, p in missing:
    print(f"{n}: {p}")
print(f"{len(pieces) - len(missing)} of {len(pieces)} pieces found; {len(missing)} not found",
      file=sys.stderr)
