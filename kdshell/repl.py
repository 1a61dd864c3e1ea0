"""The interactive prompt (prompt_toolkit): `N: kd> `, history across sessions (Up/Down, Ctrl-R),
Tab completion, colour, Enter to repeat the last d*/u, Ctrl-C to stop a command, Ctrl-D to quit."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, TextIO

from kdshell.errors import Quit

if TYPE_CHECKING:
    from prompt_toolkit.completion import CompleteEvent, Completer
    from prompt_toolkit.history import History

    from kdshell.session import Session

# Commands whose argument is a file name: Tab completes paths after them.
_FILE_COMMANDS = (".logopen", ".logappend", ".dump", "$$><", "$$<", "$><", "$<", "$$>a<", ".writemem")


def history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "kdshell" / "history"


def color_enabled(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return "NO_COLOR" not in os.environ and getattr(stream, "isatty", lambda: False)()


def make_completer(session: Session) -> Completer:
    from prompt_toolkit.completion import Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    from kdshell import dispatch

    paths = PathCompleter(expanduser=True)

    class KdCompleter(Completer):
        def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
            line = document.text_before_cursor
            current = line.rsplit(";", 1)[-1].lstrip()
            for prefix in _FILE_COMMANDS:
                if current.lower().startswith(prefix):
                    rest = current[len(prefix):].lstrip()
                    if " " in rest and prefix == ".dump":
                        rest = rest.rsplit(" ", 1)[-1]
                    yield from paths.get_completions(Document(rest, len(rest)), complete_event)
                    return
            if " " not in current:
                for name in sorted(dispatch.REGISTRY):
                    if name.startswith(current.lower()) and name != current.lower():
                        yield Completion(name, start_position=-len(current))
                return
            word = current.rsplit(" ", 1)[-1]
            command = current.split(" ", 1)[0].lower()
            for text in session_words(session, command, word):
                yield Completion(text, start_position=-len(word))

    return KdCompleter()


def session_words(session: Session, command: str, word: str) -> list[str]:
    """Names that complete `word` after `command`: modules, module!symbol, dt type names."""
    from kdshell.completion import words

    try:
        return words(session, command, word)
    except Exception:  # completion must never break the prompt
        return []


def interact(session: Session) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.lexers import PygmentsLexer

    from kdshell.lexer import KdLexer, colorize

    out = session.out
    color = color_enabled(out.stream)
    if color:
        def emit(text: str, kind: str) -> None:
            out.stream.write(colorize(text, kind))

        out.emit = emit

    path = history_path()
    history: History
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(path))
    except OSError:
        history = InMemoryHistory()
    prompt: PromptSession[str] = PromptSession(
        history=history,
        completer=make_completer(session),
        complete_while_typing=False,
        lexer=PygmentsLexer(KdLexer) if color else None,
        enable_history_search=False,  # Up/Down walk the history; Ctrl-R searches it
    )
    while True:
        try:
            line = prompt.prompt(session.prompt)
        except KeyboardInterrupt:
            continue
        except EOFError:
            raise Quit() from None
        if line.strip():
            session.run(line)
        else:
            session.repeat_last()  # WinDbg: Enter repeats the last d*/u, continuing where it stopped
