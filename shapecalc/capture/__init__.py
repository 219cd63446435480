"""Front end: MODEL and input specs, loading, torch.fx tracing with its leaf policy, and the check
that a trace computes what its module computes."""
