"""The session itself: .help, q, .echo, .verbose, .ignore_missing_pages."""
from __future__ import annotations

from kdshell.dispatch import FAMILIES, REGISTRY, command, commands_by_family, help_lines
from kdshell.errors import CommandError
from kdshell.session import Quit


def _switch(inv, current: bool, what: str) -> bool:
    """Parse an optional 0|1 argument; the new value (unchanged without an argument)."""
    if not inv.args:
        return current
    if inv.args[0] not in ("0", "1") or len(inv.args) > 1:
        raise CommandError(f"{what} takes 0 or 1, not '{inv.text}'")
    return inv.args[0] == "1"


@command(".help", family="session", syntax=".help [Command]",
         summary="List the commands by family, or explain one command",
         example=".help vertarget")
def help_(session, inv):
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
def quit_(session, inv):
    raise Quit()


@command(".echo", family="session", syntax=".echo [String]", summary="Print a line of text",
         example='.echo "checking the stack"')
def echo(session, inv):
    text = inv.text
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    session.out.line(text)


@command(".verbose", family="session", syntax=".verbose [0|1]",
         summary="Show more detail, such as the traceback of an internal error")
def verbose(session, inv):
    session.options.verbose = _switch(inv, session.options.verbose, ".verbose")
    session.out.line(f"Verbose mode {'ON' if session.options.verbose else 'OFF'}.")


@command(".ignore_missing_pages", family="session", syntax=".ignore_missing_pages [0|1]",
         summary="Hide (1) or show (0) the 'page not present in the dump file' messages",
         details="Kernel and automatic dumps leave out user and inactive pages by design; 1 silences\n"
                 "the messages about them. Results do not change, only the messages.")
def ignore_missing_pages(session, inv):
    session.options.ignore_missing_pages = _switch(inv, session.options.ignore_missing_pages,
                                                   ".ignore_missing_pages")
    state = "suppressed" if session.options.ignore_missing_pages else "displayed"
    session.out.line(f"Missing page messages are {state} "
                     f"(.ignore_missing_pages {int(session.options.ignore_missing_pages)}).")
