"""`python -m stp_edge.apps.gst [--env]`: print the directory for GST_PLUGIN_PATH (or the env lines)."""

import sys

from stp_edge.apps.gst import main

sys.exit(main())
