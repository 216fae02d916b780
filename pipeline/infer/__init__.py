"""Decoding (greedy, batched beam), metrics, batch evaluation and captioning new images."""
