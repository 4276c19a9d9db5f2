from shmbroker.cli import main

raise SystemExit(main())
