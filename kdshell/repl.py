"""The interactive prompt (prompt_toolkit): history across sessions and `N: kd> `."""
from __future__ import annotations

import os
from pathlib import Path

from kdshell.session import Quit


def history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "kdshell" / "history"


def interact(session) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(path))
    except OSError:
        history = InMemoryHistory()
    prompt = PromptSession(history=history)
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
