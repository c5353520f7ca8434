"""Model runtime: client, endpoints, limits, prices, images, Batch API; may import graph, store."""
