from resnet_mar.bench.cli import main

raise SystemExit(main())
