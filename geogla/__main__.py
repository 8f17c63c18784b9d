from geogla.cli import main

raise SystemExit(main())
