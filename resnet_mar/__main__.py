import sys

from resnet_mar.cli import main

sys.exit(main())
