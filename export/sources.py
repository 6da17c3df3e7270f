"""Where an exported model comes from: `stp_edge.model.sources`, under the names export has always used.

The definitions live in the model layer so that the runtime's torch backend can rebuild a bundle's model
without importing `stp_edge.export`.
"""

from __future__ import annotations

from stp_edge.model.sources import ModelSource, build_model, demo_checkpoint_dir, weights_fingerprint

__all__ = ["ModelSource", "build_model", "demo_checkpoint_dir", "weights_fingerprint"]
