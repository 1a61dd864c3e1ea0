"""The interactive prompt (prompt_toolkit): `N: kd> `, history across sessions (Up/Down, Ctrl-R),
Tab completion, colour, Enter to repeat the last d*/u, Ctrl-C to stop a command, Ctrl-D to quit."""
from __future__ import annotations

import os
from pathlib import Path

from kdshell.errors import Quit

# Commands whose argument is a file name: Tab completes paths after them.
_FILE_COMMANDS = (".logopen", ".logappend", ".dump", "$$><", "$$<", "$><", "$<", "$$>a<", ".writemem")


def history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "kdshell" / "history"


def color_enabled(stream) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return "NO_COLOR" not in os.environ and getattr(stream, "isatty", lambda: False)()


def make_completer(session):
    from prompt_toolkit.completion import Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document

    from kdshell import dispatch

    paths = PathCompleter(expanduser=True)

    class KdCompleter(Completer):
        def get_completions(self, document, complete_event):
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


def session_words(session, command: str, word: str) -> list[str]:
    """Names that complete `word` after `command`: modules, module!symbol, dt type names."""
    from kdshell.completion import words

    try:
        return words(session, command, word)
    except Exception:  # completion must never break the prompt
        return []


def interact(session) -> None:
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(path))
    except OSError:
        history = InMemoryHistory()
    prompt = PromptSession(
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
