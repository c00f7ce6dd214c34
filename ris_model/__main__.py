from ris_model.cli import main

raise SystemExit(main())
