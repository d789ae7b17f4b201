from pipeline.orchestration.cli import main

raise SystemExit(main())
