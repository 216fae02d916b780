"""Inputs shared by both stages: caption-file readers, tokenizer, the demo data generator."""
