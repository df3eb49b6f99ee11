from ppolab.cli import main

raise SystemExit(main())
