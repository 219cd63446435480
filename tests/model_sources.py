"""Source text of small models the CLI and JSON tests write to files and load by path."""

#: Python that looks at a size: torch.fx cannot trace it, the ATen front end splits H in two pieces
EVEN_ONLY = '''
import torch.nn as nn


class EvenOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        if x.shape[-1] % 2:
            raise ValueError("the input size must be even")
        return self.pool(self.conv(x))
'''
