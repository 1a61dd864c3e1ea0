from kdshell.cli import main

raise SystemExit(main())
