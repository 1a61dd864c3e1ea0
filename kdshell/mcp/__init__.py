"""kdshell as a Model Context Protocol server (`kdshell mcp`, `python -m kdshell.mcp`).

server.py: the MCP tools, resources and prompt on the official SDK (the optional extra
kdshell[mcp]); sessions.py: one worker process per open dump, with the per-call time bound and
idle expiry; worker.py: the process that holds a Session and runs commands; results.py: the
structured results (!analyze's record, k's frames, lm's modules, the banner's facts);
policy.py: the roots a server may read and the one folder it may write.
"""
