from kdshell.mcp.command import main

raise SystemExit(main())
