#!/usr/bin/env python3
"""Replaces the part of a Markdown file between `<!-- NAME:begin -->` and
`<!-- NAME:end -->` with standard input (which carries both markers itself), or appends
it under HEADING when the file has no such part. Used by the benchmark scripts.

    doc-section.py FILE NAME HEADING < block
"""
import sys

doc, name, heading = sys.argv[1:4]
block = sys.stdin.read().strip("\n")
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
text = open(doc).read()
if begin in text and end in text:
    text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
open(doc, "w").write(text)
