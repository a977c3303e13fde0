import sys

from elastic.lab.cloud.cli import main

sys.exit(main())
