"""`python -m stable_audio_3.ui`, the same as `stable-audio-ui`."""

from .app import main

raise SystemExit(main())
