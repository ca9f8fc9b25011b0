from adapterstudio.cli import main

raise SystemExit(main())
