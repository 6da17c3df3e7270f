"""The runtime's data flow, one module per stage, in the order a frame passes them.

Frames arrive checked: `stp_edge.frames.validate_frame` runs where a frame enters (`Detector.push`, a video
source), below the stages, and no stage checks a frame again.

    snippets  SnippetAssembler: frames -> Snippet (the sampled frames of every snippet_len frames)
    encode    Encoder: preprocess + encoder graph + region features -> EncodedBatch
    temporal  FeatureRing + schedule (ready_snippets, temporal_window), TemporalHead: Window -> TemporalOutput
    spatial   spatial_gate, SpatialHead: the snippet's region features -> SpatialOutput (scores, anomaly map)
    boxes     boxes_from_map: anomaly map -> Box list in frame pixels

Every graph call of a stage goes through `calls.run_graph` (not a stage: the door of the stages to their graphs):
one retry of a failed call, and the outputs held to the contract of `stp_edge.bundle.contract`, problems named per
snippet.

`stp_edge.api.Detector` schedules them (when, and for which snippets) and builds each `SnippetResult` once.
A stage imports only stages before it and the shared leaf modules (frames, config, geometry, results,
backends.base).
"""
