"""What the nodes are given to work with: the model client, limits, prices and images."""
