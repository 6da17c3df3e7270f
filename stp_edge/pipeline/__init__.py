"""The runtime's data flow, one module per stage, in the order a frame passes them.

    frames    validate_frame: any accepted frame -> (H, W, 3) uint8 BGR, or FrameError naming it
    snippets  SnippetAssembler (frames -> Snippet), FeatureRing (the window's features), the schedule
    encode    Encoder: preprocess + encoder graph + region features -> EncodedBatch
    temporal  TemporalHead: Window -> TemporalOutput (score, class probabilities)
    spatial   spatial_gate, SpatialHead: region features -> SpatialOutput (region scores, anomaly map)
    boxes     boxes_from_map: anomaly map -> Box list in frame pixels

`stp_edge.api.Detector` schedules them (when, and for which snippets) and builds each `SnippetResult` once.
A stage imports only stages before it and the shared leaf modules (config, geometry, results, backends.base).
"""
