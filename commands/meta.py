"""The session itself: .help, q, .echo, .verbose, .ignore_missing_pages."""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.dispatch import FAMILIES, Invocation, REGISTRY, command, commands_by_family, help_lines
from kdshell.errors import CommandError, Quit

if TYPE_CHECKING:
    from kdshell.session import Session


def _switch(inv: Invocation, current: bool, what: str) -> bool:
    """Parse an optional 0|1 argument; the new value (unchanged without an argument)."""
    if not inv.args:
        return current
    if inv.args[0] not in ("0", "1") or len(inv.args) > 1:
        raise CommandError(f"{what} takes 0 or 1, not '{inv.text}'")
    return inv.args[0] == "1"


@command(".help", family="session", syntax=".help [Command]",
         summary="List the commands by family, or explain one command",
         example=".help vertarget")
def help_(session: Session, inv: Invocation) -> None:
    out = session.out
    if inv.args:
        name = inv.args[0].lower()
        cmd = REGISTRY.get(name)
        if cmd is None:
            raise CommandError(f"No command named '{inv.args[0]}' (type .help for the list)")
        out.lines(help_lines(cmd))
        return
    out.line("kdshell commands (type .help CMD or CMD /? for one command):")
    for family, cmds in commands_by_family().items():
        if not cmds:
            continue
        out.line("")
        out.line(f"{FAMILIES[family]}:")
        for cmd in cmds:
            out.line(f"  {cmd.name:<22} {cmd.summary}")


@command("q", "qq", "qd", family="session", syntax="q", summary="Quit kdshell")
def quit_(session: Session, inv: Invocation) -> None:
    raise Quit()


@command(".echo", family="session", syntax=".echo [String]", summary="Print a line of text",
         example='.echo "checking the stack"')
def echo(session: Session, inv: Invocation) -> None:
    text = inv.text
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    session.out.line(text)


@command(".verbose", family="session", syntax=".verbose [0|1]",
         summary="Show more detail, such as the traceback of an internal error")
def verbose(session: Session, inv: Invocation) -> None:
    session.options.verbose = _switch(inv, session.options.verbose, ".verbose")
    session.out.line(f"Verbose mode {'ON' if session.options.verbose else 'OFF'}.")


@command(".ignore_missing_pages", family="session", syntax=".ignore_missing_pages [0|1]",
         summary="Hide (1) or show (0) the 'page not present in the dump file' messages",
         details="Kernel and automatic dumps leave out user and inactive pages by design; 1 silences\n"
                 "the messages about them. Results do not change, only the messages.")
def ignore_missing_pages(session: Session, inv: Invocation) -> None:
    session.options.ignore_missing_pages = _switch(inv, session.options.ignore_missing_pages,
                                                   ".ignore_missing_pages")
    state = "suppressed" if session.options.ignore_missing_pages else "displayed"
    session.out.line(f"Missing page messages are {state} "
                     f"(.ignore_missing_pages {int(session.options.ignore_missing_pages)}).")


# -- scripts and logs ---------------------------------------------------------------------------

def _script_path(inv: Invocation) -> str:
    path = inv.text.strip()
    if len(path) >= 2 and path[0] == path[-1] == '"':
        path = path[1:-1]
    if not path:
        raise CommandError(f"{inv.name} needs a script file name, e.g. {inv.name}triage.txt")
    return path


@command("$<", "$$<", family="session", syntax="$<File | $$<File",
         summary="Run a script file line by line, each line shown as if typed",
         details="$< takes the rest of the line as the file name; $$< ends at ';'.",
         example="$$<examples/triage.txt")
def run_lines(session: Session, inv: Invocation) -> None:
    from kdshell.scripts import run_script

    run_script(session, _script_path(inv), block=False)


@command("$><", "$$><", family="session", syntax="$><File | $$><File",
         summary="Run a script file as one block of commands (lines joined with ';')",
         example="$$><examples/triage.txt")
def run_block(session: Session, inv: Invocation) -> None:
    from kdshell.scripts import run_script

    run_script(session, _script_path(inv), block=True)


@command("$$>a<", family="session", syntax="$$>a<File [Arg1 Arg2 ...]",
         summary="Run a script file as one block, replacing ${$arg1}, $arg2 ... by the arguments",
         example="$$>a<examples/show.txt nt")
def run_with_args(session: Session, inv: Invocation) -> None:
    from kdshell.scripts import run_script

    if not inv.args:
        raise CommandError("$$>a< needs a script file name")
    run_script(session, inv.args[0], block=True, args=inv.args[1:])


@command(".scriptstop", family="session", syntax=".scriptstop [0|1]",
         summary="Make scripts stop at their first failing command (1) or go on (0, the default)")
def scriptstop(session: Session, inv: Invocation) -> None:
    session.options.script_stop = _switch(inv, session.options.script_stop, ".scriptstop")
    state = "stop at" if session.options.script_stop else "go on after"
    session.out.line(f"Scripts {state} a failing command.")


@command(".logopen", family="session", syntax=".logopen [/t] File",
         summary="Copy everything shown from now on into a log file (a new file, or an existing text log "
                 "started afresh; /t adds a timestamp)",
         details="Never the dump being read, a loaded image or PDB, a device, FIFO or directory, nor a\n"
                 "binary file: those are refused with one line and left as they are.",
         example=".logopen crash1.log")
def logopen(session: Session, inv: Invocation) -> None:
    import time

    args = list(inv.args)
    stamp = "/t" in args
    args = [a for a in args if a != "/t"]
    if len(args) != 1:
        raise CommandError(".logopen needs one file name")
    path = args[0]
    if stamp:
        root, dot, ext = path.rpartition(".")
        suffix = time.strftime("_%Y-%m-%d_%H-%M-%S")
        path = f"{root}{suffix}.{ext}" if dot else path + suffix
    _open_log(session, path, append=False)


@command(".logappend", family="session", syntax=".logappend File",
         summary="Like .logopen, but add to the end of an existing log file")
def logappend(session: Session, inv: Invocation) -> None:
    if len(inv.args) != 1:
        raise CommandError(".logappend needs one file name")
    _open_log(session, inv.args[0], append=True)


def _open_log(session: Session, path: str, append: bool) -> None:
    previous = session.out.close_log()
    if previous:
        session.out.line(f"Closing open log file {previous}")
    session.out.open_log(path, append=append, protected=session.protected_files(),
                         what=".logappend" if append else ".logopen")
    session.out.line(f"Opened log file '{path}'")


@command(".logclose", family="session", syntax=".logclose", summary="Close the log file")
def logclose(session: Session, inv: Invocation) -> None:
    path = session.out.log_path if session.out.log is not None else None
    if path is None:
        session.out.line("No log file open")
        return
    session.out.line(f"Closing open log file {path}")
    session.out.close_log()


@command(".logfile", family="session", syntax=".logfile", summary="Show which log file is open")
def logfile(session: Session, inv: Invocation) -> None:
    path = session.out.log_path if session.out.log is not None else None
    session.out.line(f"Log '{path}' open" if path else "No log file open")


@command(".cls", family="session", syntax=".cls", summary="Clear the screen")
def cls(session: Session, inv: Invocation) -> None:
    session.out.clear_screen()


@command(".explain", family="session", syntax=".explain [on|off]",
         summary="After each command's output, explain in a few lines how to read it (for newcomers)",
         example=".explain on")
def explain(session: Session, inv: Invocation) -> None:
    if inv.args:
        word = inv.args[0].lower()
        if word not in ("on", "off", "1", "0") or len(inv.args) > 1:
            raise CommandError(f".explain takes on or off, not '{inv.text}'")
        session.options.explain = word in ("on", "1")
    session.out.line(f"Explanations are {'on' if session.options.explain else 'off'}.")
