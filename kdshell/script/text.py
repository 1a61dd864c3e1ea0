"""The text of command programs: braces and parentheses, the command after a control token,
and aliases (`as`, `${name}`, `${/d:name}` ...), expanded as WinDbg does when a block is entered.
"""
from __future__ import annotations

import re

from kdshell.errors import CommandError


def syntax_error(text: str) -> CommandError:
    return CommandError(f"^ Syntax error in '{text.strip()}'")


def closing(text: str, pos: int, what: str = "{}") -> int:
    """The index of the bracket closing the one at text[pos] (quotes skipped); a syntax error
    naming the whole text when it is missing."""
    opener, closer = what[0], what[1]
    depth = 0
    i = pos
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            end = text.find('"', i + 1)
            if end < 0:
                break
            i = end
        elif ch == opener:
            depth += 1
        elif ch == closer:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise CommandError(f"^ Syntax error in '{text.strip()}': missing '{closer}'")


def take_block(text: str, pos: int = 0) -> tuple[str, int]:
    """`{ commands }` at `pos` (after blanks) -> (commands, index after the '}')."""
    i = _skip(text, pos)
    if i >= len(text) or text[i] != "{":
        raise CommandError(f"^ Syntax error in '{text.strip()}': a '{{' block must follow")
    end = closing(text, i)
    return text[i + 1:end], end + 1


def take_parens(text: str, pos: int = 0) -> tuple[str, int]:
    i = _skip(text, pos)
    if i >= len(text) or text[i] != "(":
        raise CommandError(f"^ Syntax error in '{text.strip()}': '(' expected")
    end = closing(text, i, "()")
    return text[i + 1:end], end + 1


def take_condition(text: str, pos: int = 0) -> tuple[str, int]:
    """A condition runs to the block's '{' (`.if (x) {`, `.if x {`)."""
    i = _skip(text, pos)
    depth = 0
    j = i
    while j < len(text):
        ch = text[j]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "{" and depth == 0:
            break
        j += 1
    cond = text[i:j].strip()
    if not cond:
        raise CommandError(f"^ Syntax error in '{text.strip()}': a condition must follow")
    return cond, j


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t;":
        pos += 1
    return pos


def split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quotes, parentheses and braces."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            elif ch == sep and depth == 0:
                parts.append("".join(cur))
                cur = []
                continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def brace_balance(line: str) -> int:
    """Open braces minus closed ones outside quotes (a script line that leaves some open goes on
    to the next lines)."""
    depth = 0
    quoted = False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
    return depth


# -- aliases ------------------------------------------------------------------------------------
ALIAS_COMMANDS = ("as", "aS", "ad", "al")
_INTERP = re.compile(r"\$\{(/[vdfn]:)?([^{}\s]+)\}")
_PIECE = re.compile(r'\s+|;|(?:[^\s;{}"$]|\$(?!\{))*\$\{[^{}\s]*\}[^\s;{}"]*|\{|\}|"[^"]*"?|[^\s;{}"]+')


def interpret(match: re.Match[str], aliases: dict[str, str]) -> str:
    how, name = match.group(1), match.group(2)
    if how == "/v:":
        return match.group(0)
    if how == "/d:":
        return "1" if name in aliases else "0"
    if how == "/f:":
        return aliases.get(name, "")
    if how == "/n:":
        return name if name in aliases else match.group(0)
    return aliases.get(name, match.group(0))


def expand(text: str, aliases: dict[str, str]) -> str:
    """Aliases replaced in `text` outside its nested `{ }` blocks (they are expanded when
    entered): `${...}` anywhere, a bare alias name where it stands alone between blanks, ';' or
    braces (not inside quotes, not as the name `as`/`aS`/`ad` define or delete)."""
    if "${" not in text and not aliases:
        return text
    out: list[str] = []
    depth = 0
    at_start = True
    skip_name = False
    for m in _PIECE.finditer(text):
        piece = m.group(0)
        if piece == "{":
            depth += 1
        elif piece == "}":
            depth = max(0, depth - 1)
            at_start = depth == 0
        elif depth == 0:
            if piece == ";":
                at_start, skip_name = True, False
            elif not piece.isspace():
                if piece.startswith('"'):
                    piece = _INTERP.sub(lambda x: interpret(x, aliases), piece)
                elif skip_name and not piece.startswith("/"):
                    skip_name = False
                    if piece.startswith("${/v:") and piece.endswith("}"):
                        piece = piece[5:-1]
                else:
                    was_start = at_start
                    at_start = False
                    if was_start and piece in ALIAS_COMMANDS:
                        skip_name = piece != "al"
                    elif piece in aliases:
                        piece = aliases[piece]
                    elif "${" in piece:
                        piece = _INTERP.sub(lambda x: interpret(x, aliases), piece)
        out.append(piece)
    return "".join(out)


def substitute_variable(text: str, name: str, value: str) -> str:
    """`.foreach`'s variable: replaced where it stands alone between blanks, ';' or braces (even
    in nested blocks), and as `${name}` anywhere."""
    text = text.replace("${" + name + "}", value)
    pattern = re.compile(r"(?<![^\s;{}])" + re.escape(name) + r"(?![^\s;{}])")
    return pattern.sub(lambda _: value, text)
