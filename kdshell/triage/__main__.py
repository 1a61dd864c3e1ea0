"""`python -m kdshell.triage PATH...`: the same as `kdshell triage PATH...`."""
from kdshell.triage.cli import entry

entry()
