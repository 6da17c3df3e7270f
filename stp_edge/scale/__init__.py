"""Scale-out beyond one process: Ray Data for archives, Triton Inference Server for many cameras."""
