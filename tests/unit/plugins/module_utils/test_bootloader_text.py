"""The byte-preserving text helpers of the kernelstub, rEFInd and Limine modules: lines that join back
to the same bytes, and command lines reworded without touching the blanks of the words that stay."""
from __future__ import annotations

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_text as text


@pytest.mark.parametrize("content", ["", "a", "a\n", "a\r\nb\r\n", "a\nb", "\n\n", "x\r\n\ny", "tab\there\n"])
def test_lines_join_back_to_the_same_bytes(content):
    assert text.join(text.lines(content)) == content


def test_lines_split_the_line_ending_off():
    assert text.lines("a\r\nb\nc") == [["a", "\r\n"], ["b", "\n"], ["c", ""]]
    assert text.newline(text.lines("a\r\nb\n")) == "\r\n" and text.newline(text.lines("a\nb")) == "\n"


@pytest.mark.parametrize("before,words,after", [
    ("quiet splash", ["quiet", "splash"], "quiet splash"),                                # unchanged: same object text
    ("quiet  splash ", ["quiet", "splash", "iommu=pt"], "quiet  splash iommu=pt "),     # appended, trailing blank kept
    (" ro   quiet\tsplash", ["ro", "splash"], " ro\tsplash"),                            # removed with its blanks
    ("a  b=1   c", ["a", "b=2", "c"], "a  b=2   c"),                                    # replaced in place
    ("a  b=1   c", ["a", "b=2", "x", "c"], "a  b=2 x c"),                                # one replaced by two
    ("a  b c", ["b", "c"], "b c"),                                                       # first word removed
    ('root=/dev/sdb9 my_opt="this is it"  quiet', ["root=/dev/sdb9", 'my_opt="this is it"'],
     'root=/dev/sdb9 my_opt="this is it"'),                                              # quoted word kept whole
    ("", ["iommu=pt"], "iommu=pt"),
    ("  ", ["iommu=pt"], "  iommu=pt"),
    (" a ", [], "  "),
])
def test_reword(before, words, after):
    assert text.reword(before, words) == after
