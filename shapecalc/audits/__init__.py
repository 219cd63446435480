"""Audits over a propagated graph: crop offsets and merges (coordinate maps), receptive fields, and
the resampling shift audit."""
