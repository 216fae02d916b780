"""Testbeds: caption files and feature files whose grids carry known information, built on the
captions layer (the demo's scenes, real Flickr8k captions); they measure decoders and objectives."""
