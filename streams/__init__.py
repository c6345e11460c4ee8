"""Reactive operators over streams of envelopes: windows, watermarks, deduplication, aggregates, features."""
