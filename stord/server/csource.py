"""What C source from a client may include before the daemon hands it to clang.

clang echoes the offending lines of an included file in its error messages, so
`#include "/etc/shadow"` would leak a host file to the client. Only system headers of the
BPF world and stord.h may be included, named literally (no computed includes).
"""

from __future__ import annotations

import re

from stord.errors import AccessDenied

# #include <linux/bpf.h>, <bpf/bpf_helpers.h>, <asm/...>, "stord.h": relative names in these
# trees, no "..".
_ALLOWED = re.compile(r"^(?:(?:linux|bpf|asm|asm-generic)/[A-Za-z0-9_./-]+|stord\.h|"
                      r"stdint\.h|stdbool\.h|stddef\.h|limits\.h)$")
_DIRECTIVE = re.compile(r"^\s*(?:#|%:)\s*([A-Za-z_]+)(.*)$")  # %: is the digraph of #
_TARGET = re.compile(r'^\s*(?:<([^<>"]+)>|"([^<>"]+)")\s*(?://.*|/\*.*)?$')


def check_c_source(src: str) -> None:
    text = _strip_comments(src.replace("\\\r\n", "").replace("\\\n", ""))
    for n, line in enumerate(text.splitlines(), 1):
        m = _DIRECTIVE.match(line)
        if m is None:
            continue
        directive, rest = m.group(1), m.group(2)
        if directive in ("include_next", "import", "embed"):
            raise AccessDenied(f"line {n}: #{directive} is not allowed in programs")
        if directive != "include":
            continue
        t = _TARGET.match(rest)
        if t is None:
            raise AccessDenied(f"line {n}: only literal #include <...> or \"...\" is allowed")
        name = t.group(1) or t.group(2)
        if ".." in name.split("/") or not _ALLOWED.match(name):
            raise AccessDenied(f"line {n}: #include of {name!r} is not allowed (only linux/, "
                               "bpf/, asm/ headers and stord.h)")


def _strip_comments(text: str) -> str:
    """Comments become a space (newlines kept); string and char literals stay as they are,
    so that a "/*" inside a string cannot hide a directive from the check."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(" " + "\n" * text.count("\n", i, j))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)
