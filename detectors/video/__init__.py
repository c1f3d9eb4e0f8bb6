"""Video analysis, pure and I/O-free: config → backends (load_detector) → motion gate → tracker →
zone rules → evidence, tied together per camera by pipeline.CameraPipeline."""
