"""The size engine: sympy helpers, symbolic tensors, the rule registry, the Interpreter that runs
rules node by node, and the exact domain of valid input sizes."""
