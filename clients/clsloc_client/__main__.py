from clsloc_client.cli import main

raise SystemExit(main())
