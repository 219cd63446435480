"""Answers built on an analysis: check findings, nearest valid sizes and padding, cost as a function
of the input size, and torch.export specs."""
