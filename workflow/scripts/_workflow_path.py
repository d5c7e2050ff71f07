"""Puts this checkout's workflow/ first on sys.path, so that a job imports its own finetox package.

The conda envs do not install finetox: Snakemake builds an env from a copy of its file in the conda
prefix (where a relative path such as `-e ../workflow` does not resolve), shares it between checkouts,
and blocks PYTHONPATH inside it. Snakemake puts each script's own folder on sys.path; this module,
beside the scripts, adds the package's folder from there.
"""

import sys
from pathlib import Path

WORKFLOW = str(Path(__file__).resolve().parents[1])
if WORKFLOW not in sys.path:
    sys.path.insert(0, WORKFLOW)
