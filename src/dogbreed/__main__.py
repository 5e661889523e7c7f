from dogbreed.cli import main

raise SystemExit(main())
