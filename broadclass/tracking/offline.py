"""``python -m broadclass.tracking.offline <spool_dir>``: the former name of ``python -m broadclass.tracking.spool``,
kept so the upload command in users' scripts still works. The logger is :mod:`broadclass.tracking.logger`.
"""

import sys

from broadclass.tracking.spool import main

if __name__ == "__main__":
    sys.exit(main())
