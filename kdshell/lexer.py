"""Colour by meaning: one pygments lexer for the typed command and for kdshell's output.

Addresses, symbols (module!function+0x12), missing memory (????????), registers, strings, and
error and warning lines each get a token type; a terminal formatter turns them into colour.
Nothing here changes text: colour is added on the way to a terminal only.
"""
from __future__ import annotations

from pygments.formatters import Terminal256Formatter
from pygments.lexer import RegexLexer, bygroups
from pygments.style import Style
from pygments.token import (
    Comment,
    Error,
    Generic,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Text,
    Whitespace,
)

_ERROR_LINE = (
    r"^(?:\s*\^ .*|No export .*|Memory (?:read|access) error.*|Couldn't resolve error.*|"
    r"Internal error.*|Unable to .*|.*[Ee]rror at '.*|Bad register error.*|Range error.*|"
    r"Syntax error.*|Page [0-9a-f]+ not present in the dump file.*)$"
)


class KdLexer(RegexLexer):
    name = "KD"
    aliases = ["kd", "windbg"]

    tokens = {
        "root": [
            (r"^\d+: kd> ", Generic.Prompt),
            (_ERROR_LINE, Generic.Error),
            (r"^(?:WARNING|\*\*\* WARNING|NOTE):.*$", Generic.Emph),
            (r"^\*{5,}.*$", Generic.Heading),
            (r'"(?:[^"\\\n]|\\.)*"', String),
            (r"\?{2,}(?:`\?+)?", Error),
            (r"\$\$.*?(?=;|$)", Comment),
            # module!symbol+0x12, module+0x12 (symbols before plain words)
            (r"[A-Za-z_][\w.]*![\w@?$<>:~`'.]+(?:\+0x[0-9a-fA-F]+)?", Name.Function),
            (r"@?\$?(?:r[a-d]x|r[sd]i|r[sb]p|r(?:8|9|1[0-5])|rip|e[a-d]x|e[sd]i|e[sb]p|eip|efl|"
             r"t(?:1[0-9]|[0-9])|ip|csp|ra)\b", Name.Variable),
            (r"\b[0-9a-fA-F]{8}`[0-9a-fA-F]{8}\b", Number.Hex),
            (r"\b0x[0-9a-fA-F`]+\b", Number.Hex),
            (r"\b0n\d+\b", Number.Integer),
            (r"(^|(?<=; ))([.!][A-Za-z_][\w]*)", bygroups(Text, Keyword)),
            (r"\b[0-9a-fA-F]{8,16}\b", Number.Hex),
            (r"[+\-*/=<>&|^~]", Operator),
            (r"[()\[\]{},;:]", Punctuation),
            (r"\s+", Whitespace),
            (r"\w+", Text),
            (r".", Text),
        ]
    }


class KdStyle(Style):
    styles = {
        Generic.Prompt: "bold ansibrightblue",
        Generic.Error: "ansired",
        Generic.Emph: "ansiyellow",
        Generic.Heading: "bold",
        Error: "ansibrightred",
        Keyword: "bold",
        Name.Function: "ansigreen",
        Name.Variable: "ansicyan",
        Number.Hex: "ansibrightcyan",
        String: "ansiyellow",
        Comment: "italic ansibrightblack",
    }


def colorize(text: str, kind: str = "normal") -> str:
    """ANSI-coloured `text`; error and warning lines in one colour whatever they contain."""
    from pygments import highlight

    if kind == "error":
        return "".join(f"\x1b[31m{line}\x1b[39m" if line.strip() else line for line in text.splitlines(True))
    if kind == "warning":
        return "".join(f"\x1b[33m{line}\x1b[39m" if line.strip() else line for line in text.splitlines(True))
    out = highlight(text, KdLexer(stripnl=False, ensurenl=False), Terminal256Formatter(style=KdStyle))
    return out
