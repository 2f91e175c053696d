import sys

from resnet_mar.bench.cli import main

sys.exit(main())
