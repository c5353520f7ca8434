"""What happens to one sample (the graph's nodes and their prompts); may import graph, runtime."""
