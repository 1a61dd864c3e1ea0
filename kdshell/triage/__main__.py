"""`python -m kdshell.triage PATH...`: the same as `kdshell triage PATH...`."""
from kdshell.triage.cli import entry

if __name__ == "__main__":  # not when a worker process imports the main module again
    entry()
