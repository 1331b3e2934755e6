# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Byte-preserving text edits shared by the bootloader modules (kernelstub, rEFInd, Limine).

A user's file must come back identical except for the edited words: the same line endings, the
same blanks between the words that stay, the leading and trailing blanks of a quoted option
string (rEFInd's own example has one before its closing quote).
"""
from __future__ import annotations

import difflib
import re

from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import split_cmdline


def lines(text: str) -> list:
    """``[body, newline]`` pairs (newline ``"\\r\\n"``, ``"\\n"`` or ``""``); ``join`` gives the text back."""
    out = []
    for piece in re.findall(r"[^\n]*\n|[^\n]+\Z", text or ""):
        if piece.endswith("\r\n"):
            out.append([piece[:-2], "\r\n"])
        elif piece.endswith("\n"):
            out.append([piece[:-1], "\n"])
        else:
            out.append([piece, ""])
    return out


def join(pairs: list) -> str:
    return "".join(body + end for body, end in pairs)


def newline(pairs: list) -> str:
    """The file's line ending, for a line that is added."""
    return "\r\n" if any(end == "\r\n" for _body, end in pairs) else "\n"


def _spans(text: str) -> list:
    """``(start, end)`` of each word as ``split_cmdline`` splits it (blanks separate, quotes group)."""
    spans, start, quoted = [], None, False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
            if start is None:
                start = i
        elif ch.isspace() and not quoted:
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def reword(text: str, words: list) -> str:
    """``text`` (a command line) holding ``words`` instead: kept words keep the blanks between
    them, the leading and trailing blanks stay, new words are joined with one blank."""
    spans = _spans(text)
    old = [text[s:e] for s, e in spans]
    if old == list(words):
        return text
    if not spans or old != split_cmdline(text):
        lead = text[:len(text) - len(text.lstrip())]
        trail = text[len(text.rstrip()):] if text.strip() else ""
        return lead + " ".join(words) + trail
    pieces = []
    prev = None  # original index of the word emitted last, when it was an original word

    def keep(k):
        # after a kept word (and any removed ones) the blanks in front of this word stay
        nonlocal prev
        pieces.append((text[spans[k - 1][1]:spans[k][0]] if prev is not None and k > 0 else " ", old[k]))
        prev = k

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=list(words), autojunk=False).get_opcodes():
        if tag == "equal":
            for k in range(i1, i2):
                keep(k)
        elif tag == "replace" and i2 - i1 == j2 - j1:  # words replaced in place keep their blanks
            for k, w in zip(range(i1, i2), words[j1:j2]):
                pieces.append((text[spans[k - 1][1]:spans[k][0]] if prev == k - 1 else " ", w))
                prev = k
        elif tag in ("replace", "insert"):
            for n, w in enumerate(words[j1:j2]):
                # the first new word takes the blanks of the first word it replaces
                first = tag == "replace" and n == 0 and i1 > 0 and prev == i1 - 1
                pieces.append((text[spans[i1 - 1][1]:spans[i1][0]] if first else " ", w))
                prev = None
    body = "".join((sep if n else "") + w for n, (sep, w) in enumerate(pieces))
    return text[:spans[0][0]] + body + text[spans[-1][1]:]
