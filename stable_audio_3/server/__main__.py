"""`python -m stable_audio_3.server --model PATH` starts the HTTP server."""

import sys

from . import main

sys.exit(main())
