from kiisrv.cli import main

raise SystemExit(main())
